#!/bin/bash
# MTT at 1 image per class on MNIST: its image lr and expert segment chosen on images nothing in MTT saw.
# Experts without 5,000 training images (55.4 CPU-min for the zoo's 3 x 6 epochs at width 64 on all of them):
#   kip trajectories --dataset mnist --data-dir ../shared/datasets --experts 3 --epochs 6 --width 64 \
#     --val-size 5000 --out runs/experts_val5000
# Each setting: seed 0 (the zoo's first real start), 6 CPU-minutes of MTT (the zoo's middle reading), validation
# on 2,000 of the experts' held-out rows (none of the set's sources), then the set trained under the dsa protocol
# (2 networks, hard labels, the zoo's judge) with its validation split drawn from those same rows.
# Run from the repository root at a clean commit; `bash run.sh NAME` runs one setting (one per core).
set -e
declare -A SETTINGS=(
  [zoo-lr100]="--syn-steps 20 --expert-epochs 2 --max-start-epoch 4 --lr 100"
  [lr10]="--syn-steps 20 --expert-epochs 2 --max-start-epoch 4 --lr 10"
  [lr1000]="--syn-steps 20 --expert-epochs 2 --max-start-epoch 4 --lr 1000"
  [early-lr100]="--syn-steps 20 --expert-epochs 1 --max-start-epoch 2 --lr 100"
)
for name in "${@:-${!SETTINGS[@]}}"; do
  kip distill --method mtt --dataset mnist --data-dir ../shared/datasets --ipc 1 --seed 0 \
    --expert-dir runs/experts_val5000 ${SETTINGS[$name]} --kernel rf-convnet3 --rf-models 4 --rf-width 128 \
    --precision float32 --steps 1000000 --eval-every 1000000 --checkpoint-every 10 --max-seconds 360 --clock cpu \
    --val-size 2000 --no-progress --out runs/mtt_settings/$name
  kip evaluate --distilled runs/mtt_settings/$name/distilled.npz --dataset mnist --data-dir ../shared/datasets \
    --method train --protocol dsa --networks 2 --baseline-subsets 0 --val-size 2000 --val-from-set \
    --cache-dir runs/mtt_settings/networks --no-progress --out results/mtt_settings_mnist/$name.json
done
