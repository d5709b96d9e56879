#!/bin/bash
# FRePo at 1 image per class on MNIST with FRePo's own distillation network in the pool (`--pool-net frepo`:
# its Conv, width x 1, 2, 4 channels, batch norm before the 2nd and 3rd blocks), the lever
# results/frepo_decay_mnist.md left untested. At width 128 (FRePo's) a step costs ~4 CPU-s here (20 CPU-minutes
# reach ~300 steps: a GPU experiment); on this CPU the same network at width 32 (32 -> 64 -> 128 channels), at the
# zoo's budget (20 CPU-minutes) and the settings of results/frepo_budget_mnist.md (LAMB lr 3e-3 constant,
# 2,000 training images held out for validation), so its validation curve reads beside that run's.
# Seed 0 ran first (one core, files without a seed suffix), then seeds 1 and 2 side by side, one core each.
# Every distillation stops on its own CPU clock, so sharing the cores changes the wall time, not the budget.
# Run from the repository root at a clean commit.
set -e
seed() {  # $1: distillation seed; $2: core
  local suffix=$([ $1 = 0 ] || echo -seed$1)
  local out=runs/frepo_net/frepo-conv-w32-20min$suffix
  taskset -c $2 kip distill --method frepo --pool-net frepo --width 32 --dataset mnist --data-dir ../shared/datasets \
    --ipc 1 --kernel rf-convnet3 --rf-models 4 --rf-width 128 --precision float32 --lr 0.003 --steps 100000 \
    --max-seconds 1200 --clock cpu --eval-every 250 --val-size 2000 --seed $1 --no-progress --out $out
  cp $out/metrics.json results/frepo_net_mnist/frepo-conv-w32-20min$suffix.json
  # The final set under FRePo's own evaluation (the zoo's own-protocol overrides: 2 networks, 3 random real
  # subsets under the same protocol, trained once and then read from the cache)
  taskset -c $2 kip evaluate --distilled $out/distilled.npz --dataset mnist --data-dir ../shared/datasets --method train \
    --protocol frepo --networks 2 --baseline-subsets 3 --cache-dir runs/networks --no-progress \
    --out results/frepo_net_mnist/frepo_protocol${suffix//-/_}.json
}
seed 0 1
seed 1 1 & seed 2 0 & wait
