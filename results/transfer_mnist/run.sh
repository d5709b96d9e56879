#!/bin/bash
# results/transfer_mnist.md: KIP-ConvNet sets at 1 and 10 per class under the rfad and dc protocols.
# Its first rows were judged at ecdc609 (2026-12-05) from sets in runs/transfer_sets, which are gone:
#   python experiments/transfer.py runs/transfer_sets --data-dir ../shared/datasets --protocols rfad dc --no-progress
# The one-hour sets (results/kip_convnet_60min_seeds/run.sh: rf-convnet3 Platt KIP, then exact-NTK fine-tuning at
# the lr chosen on held-out training images; 3 distillation seeds) are judged under both protocols here and join
# those rows through --merge (nothing of the earlier rows is judged again; each row names the commit that judged
# it). Their rfad networks are the ones results/transfer_mnist_ipc1_finetuned_rfad.md trained (the networks cache).
# Run from the repository root at a clean commit, one core.
set -e
taskset -c 0 python experiments/transfer.py runs/kip_convnet_60min_seeds/sets --data-dir ../shared/datasets \
  --protocols rfad dc --merge results/transfer_mnist.json --no-progress
