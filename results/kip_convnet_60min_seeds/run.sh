#!/bin/bash
# The one-hour KIP-ConvNet3 pipeline at 1 image per class on MNIST (results/kip_convnet_mnist_60min_*.md:
# rf-convnet3 Platt KIP, 1000 steps, then 500 exact-NTK fine-tuning steps at the Adam lr 3e-3 chosen there on
# 5000 held-out training images), for distillation seeds 0 and 1, one core each; then the fine-tuned sets
# (KRR 95.89 at seed 0 before) under the rfad protocol, where the goal of >= 88 % at 1 per class stands
# unmet (best 86.9: a set of KRR 92.4). Run from the repository root at a clean commit.
set -e
R=runs/kip_convnet_60min_seeds
for s in 0 1; do
  ( taskset -c $s python experiments/kip_convnet.py --data-dir ../shared/datasets --ipc 1 --steps 1000 --target-batch 500 \
      --loss platt --eval rf --val-size 5000 --first-seed $s --runs-dir $R --results-dir $R/tables \
      --name kip_convnet_mnist_60min_rf_seed$s --no-progress
    taskset -c $s python experiments/kip_convnet.py --data-dir ../shared/datasets --kernel convnet3 --precision float32 \
      --ipc 1 --steps 500 --target-batch 50 --loss platt --lr 0.003 --val-size 5000 --first-seed $s \
      --init-from $R/mnist-rf-convnet3-4x128-platt-ipc1-val5000-seed$s --eval exact --eval-every 500 \
      --runs-dir $R --results-dir $R/tables --name kip_convnet_mnist_60min_finetune_seed$s --no-progress ) &
done
wait
# Both stages' seeds in one table each (every cell is reused from above: nothing reruns)
python experiments/kip_convnet.py --data-dir ../shared/datasets --ipc 1 --steps 1000 --target-batch 500 --loss platt \
  --eval rf --val-size 5000 --seeds 2 --runs-dir $R --name kip_convnet_mnist_60min_rf_seeds --no-progress
# The fine-tuned sets as distillation seeds of one setting, under rfad beside random real subsets
mkdir -p $R/sets
for s in 0 1; do
  ln -sfn ../mnist-convnet3-float32-tb50-platt-ipc1-from-mnist-rf-convnet3-4x128-platt-ipc1-val5000-seed$s-lr0.003-val5000-seed$s \
    $R/sets/ipc1-rf-then-exact-platt-learn-seed$s
done
python experiments/transfer.py $R/sets --data-dir ../shared/datasets --protocols rfad --no-progress \
  --name transfer_mnist_ipc1_finetuned_rfad
