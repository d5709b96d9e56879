#!/bin/bash
# FRePo at 1 image per class on MNIST for 60 CPU-minutes (3x the zoo's budget) at the zoo's settings and
# the image lr chosen on validation (3e-3, results/frepo_lr_mnist.md): is the zoo's shortfall the budget?
# Run from the repository root at a clean commit (here: distilled at 7a8268c, judged and the width run at
# 6290ad2, the same kip/ code), one core (taskset -c 1).
set -e
out=runs/frepo_budget/lr0.003-60min
kip distill --method frepo --dataset mnist --data-dir ../shared/datasets --ipc 1 --width 64 \
  --kernel rf-convnet3 --rf-models 4 --rf-width 128 --precision float32 --lr 0.003 --steps 100000 \
  --max-seconds 3600 --clock cpu --eval-every 500 --val-size 2000 --seed 0 --no-progress --out $out
# The final set under FRePo's own evaluation (the zoo's own-protocol overrides: 2 networks, 3 random
# real subsets under the same protocol; their networks come from the zoo's cache when already trained).
kip evaluate --distilled $out/distilled.npz --dataset mnist --data-dir ../shared/datasets --method train \
  --protocol frepo --networks 2 --baseline-subsets 3 --cache-dir runs/networks --no-progress \
  --out results/frepo_budget_mnist/frepo_protocol.json
# Width: the zoo's 20 CPU-minutes at width 128 (the zoo distils FRePo at 64; FRePo's own distillation
# network is wider still, 128 -> 256 -> 512, with batch norm, which kip's FRePo does not build).
kip distill --method frepo --dataset mnist --data-dir ../shared/datasets --ipc 1 --width 128 \
  --kernel rf-convnet3 --rf-models 4 --rf-width 128 --precision float32 --lr 0.003 --steps 100000 \
  --max-seconds 1200 --clock cpu --eval-every 250 --val-size 2000 --seed 0 --no-progress \
  --out runs/frepo_budget/lr0.003-width128-20min
