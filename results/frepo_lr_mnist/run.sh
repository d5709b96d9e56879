#!/bin/bash
# FRePo at 1 image per class on MNIST: its image lr (LAMB) chosen on a validation split for a short
# CPU budget. Run from the repository root at a clean commit (here f419c1b), one core (taskset -c 0).
set -e
for lr in 0.0003 0.003 0.03; do
  kip distill --method frepo --dataset mnist --data-dir ../shared/datasets --ipc 1 --width 64 \
    --kernel rf-convnet3 --rf-models 4 --rf-width 128 --precision float32 --lr $lr --steps 100000 \
    --max-seconds 360 --clock cpu --eval-every 300 --val-size 2000 --seed 0 --no-progress \
    --out runs/frepo_lr/lr$lr-6min
done
