#!/bin/bash
# results/label_information_mnist.md: what the KIP sets' images carry without their learned labels, the evidence
# for why KIP's Platt sets lose to random real subsets under the hard-label dc / dsa protocols. Sets: the one-hour
# pipeline's sets for seeds 0-2 (rf-convnet3 Platt KIP, then exact-NTK fine-tuning; results/kip_convnet_60min_seeds/
# run.sh: under dc 53.7 ± 7.1 against random 63.2 in results/transfer_mnist.md), and the method zoo's kept 20-minute
# KIP sets (random features, Platt: dsa 48.4 ± 4.3; exact kernel, MSE: dsa 70.5 ± 11.1; random real 53.8) and Label
# Solve's (real images, solved labels).
# Run from the repository root at a clean commit, one core (~2 minutes a set at rf-convnet3 4 x 128).
set -e
R=runs/kip_convnet_60min_seeds/sets
C=results/method_zoo_mnist_cells
taskset -c 0 python experiments/label_information.py $R/ipc1-rf-then-exact-platt-learn-seed{0,1,2} \
  $C/kip-rf-ipc1-seed0/snapshots/step-0000480.npz $C/kip-rf-ipc1-seed1/snapshots/step-0000535.npz \
  $C/kip-exact-ipc1-seed0/snapshots/step-0000565.npz $C/kip-exact-ipc1-seed1/snapshots/step-0000630.npz \
  $C/label-solve-ipc1-seed0/distilled.npz --data-dir ../shared/datasets --no-progress
