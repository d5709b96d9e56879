#!/bin/bash
# The setting chosen on validation by run.sh, at the zoo's 20 CPU-minutes, 2 seeds (one per core), judged as the zoo
# judges (dsa protocol, 2 networks, 5 random real subsets). Usage: bash run20.sh SEED "SETTING OPTIONS"
set -e
seed=$1; options=$2
kip distill --method mtt --dataset mnist --data-dir ../shared/datasets --ipc 1 --seed $seed \
  --expert-dir runs/experts_val5000 $options --kernel rf-convnet3 --rf-models 4 --rf-width 128 \
  --precision float32 --steps 1000000 --eval-every 1000000 --checkpoint-every 10 --max-seconds 1200 --clock cpu \
  --val-size 2000 --no-progress --out runs/mtt_settings/chosen-20min-seed$seed
kip evaluate --distilled runs/mtt_settings/chosen-20min-seed$seed/distilled.npz --dataset mnist \
  --data-dir ../shared/datasets --method train --protocol dsa --networks 2 --cache-dir runs/mtt_settings/networks \
  --no-progress --out results/mtt_settings_mnist/chosen-20min-seed$seed.json
