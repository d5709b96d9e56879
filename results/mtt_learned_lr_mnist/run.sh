#!/bin/bash
# MTT's 1-per-class 20-minute sets under the dsa protocol at MTT's own learned lr (read from each
# run's checkpoint, 10 iterations after the kept snapshot), beside random real subsets at that lr.
# Seed 1's record is from a rerun at 4f2c615 with --cache-dir runs/mtt_lr_clean/networks (nothing cached).
cd /work/main
for spec in "0 0000460 0.02512" "1 0000410 0.02515"; do
  set -- $spec
  .venv/bin/kip evaluate --distilled results/method_zoo_mnist_cells/mtt-ipc1-seed$1/snapshots/step-$2.npz \
    --dataset mnist --data-dir ../shared/datasets --method train --protocol dsa --lr $3 --networks 2 \
    --baseline-subsets 5 --cache-dir runs/networks --no-progress --out runs/mtt_lr/seed$1.json
done
