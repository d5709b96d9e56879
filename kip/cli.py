"""The `kip` command line: `kip distill`, `kip evaluate` (KRR, finite networks, SLaPkNN), `kip label-solve`,
and the Data Diet's `kip score`, `kip prune`, `kip train`.

Bad input prints one line `kip: error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from kip import InputError, data, knn, krr, models, scores, train
from kip.kernels import rf

DEFAULT_RUNS_DIR = "runs"


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=data.DEFAULT_DATASET,
                   help="data set name: 'digits' is embedded; others are read from DIR/NAME.npz or TFDS (default: %(default)s)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder holding NAME.npz (keys x_train, y_train, x_test, y_test)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p)
    p.add_argument("--kernel", default="fc1",
                   help="kernel preset: fc1, fc2, fc3, convnet, convnet3, myrtle5, myrtle7, myrtle10; rf-NAME: "
                        "the random-feature NNGP estimate of preset NAME, e.g. rf-convnet3 (default: %(default)s)")
    p.add_argument("--rf-models", type=int, default=rf.DEFAULT_MODELS,
                   help="rf- kernels: random networks per estimate (default: %(default)s)")
    p.add_argument("--rf-width", type=int, default=rf.DEFAULT_WIDTH,
                   help="rf- kernels: channels / hidden units of each network; features in float32, "
                        "Gram matrix and ridge solve in float64 (default: %(default)s)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices the targets / test set are split over, data-parallel (default: all visible)")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten after standardisation (KIP ConvNet recipe)")
    p.add_argument("--precision", choices=("float64", "float32"), default="float64",
                   help="dtype of images and kernels; the ridge solve is always float64 (default: %(default)s)")
    p.add_argument("--reg", type=float, default=krr.DEFAULT_REG, help="ridge, scaled by tr(K)/n (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=krr.DEFAULT_BLOCK, help="test rows per kernel block (default: %(default)s)")
    p.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                   help="memory for image pairs computed at once by kernels with pooling, e.g. 8GB "
                        "(default: one pair at a time, fastest on CPU; raise it on accelerators)")


def _size(text: str) -> float:
    """'8GB', '512MB', '1e9' -> bytes."""
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit):
            t, scale = t[: -len(unit)], factor
            break
    else:
        scale = 1
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8GB, 512MB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kip", description="Dataset distillation with infinite-width kernels.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="learn a small support set by Kernel Inducing Points (KIP)")
    _add_data_args(p)
    p.add_argument("--ipc", type=int, default=10, help="images per class in the support set (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps; 0 evaluates the initial real images (default: %(default)s)")
    p.add_argument("--target-batch", type=int, default=5000, help="class-balanced target images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.04, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--learn-labels", action="store_true", help="learn the support labels too")
    p.add_argument("--loss", choices=("mse", "platt"), default="mse",
                   help="platt: cross-entropy of a learned temperature times the KRR prediction (default: %(default)s)")
    p.add_argument("--rf-fixed", dest="rf_resample", action="store_false",
                   help="rf- kernels: the same random networks every step (default: fresh ones each step)")
    p.add_argument("--seed", type=int, default=0, help="support initialisation, target batches and random networks")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="start from this distilled set (images and labels, e.g. a random-feature run's distilled.npz) "
                        "instead of real images: fine-tuning under another kernel")
    p.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations and checkpoints (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: runs/distill-DATASET-KERNEL-ipcN-seedS)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("label-solve", help="closed-form labels for a class-balanced real support set")
    _add_data_args(p)
    p.add_argument("--ipc", type=int, default=10, help="images per class in the support set (default: %(default)s)")
    p.add_argument("--target-size", type=int, default=None, help="training images to fit (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: runs/label-solve-DATASET-KERNEL-ipcN-seedS)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")

    p = sub.add_parser("evaluate", help="test accuracy of a distilled set (ours or the authors' .npz release): "
                                          "KRR, finite networks trained on it, or SLaPkNN")
    p.add_argument("--distilled", required=True, metavar="FILE", help="an .npz with 'images' and 'labels'")
    _add_data_args(p)
    p.add_argument("--out", default=None, metavar="FILE", help="also write the result as JSON here")
    p.add_argument("--method", choices=("krr", "train", "slapknn"), default="krr",
                   help="krr: kernel ridge regression with --kernel; train: finite networks; "
                        "slapknn: soft-label prototype kNN (default: %(default)s)")
    _add_train_args(p)

    p = sub.add_parser("score", help="Data Diet scores (EL2N, GraNd, forgetting) of every training example, "
                                       "averaged over independently trained networks")
    _add_dataset_args(p)
    p.add_argument("--score", choices=scores.SCORES, required=True)
    p.add_argument("--runs", type=int, default=10, help="networks averaged; run i trains from seed SEED + i (default: %(default)s)")
    p.add_argument("--epoch", type=int, default=20, help="epoch the scores are read at; 0: initialisation (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--never-learned", choices=scores.NEVER_LEARNED, default="inf",
                   help="forgetting score of an example never classified correctly (default: %(default)s)")
    p.add_argument("--last-layer-only", action="store_true", help="GraNd over the output layer's parameters only (cheap, not the paper's)")
    p.add_argument("--out", default="scores.npz", help="score file; its runs go to OUT-runs/, its histogram to OUT.png (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace scores or runs made with other options")
    _add_recipe_args(p)

    p = sub.add_parser("prune", help="keep the highest-scoring fraction of a training set (indices to train on)")
    p.add_argument("--scores", required=True, metavar="FILE", help="a kip score file")
    p.add_argument("--keep", type=float, required=True, help="fraction of the training set kept, in (0, 1]")
    p.add_argument("--offset", type=float, default=0.0, metavar="H", help="fraction of hardest examples dropped first (default: 0)")
    p.add_argument("--class-balanced", action="store_true", help="keep each class in proportion to its size")
    p.add_argument("--random", action="store_true", help="random pruning of the same size (a baseline; ignores the scores)")
    p.add_argument("--seed", type=int, default=0, help="for ties and --random (default: %(default)s)")
    p.add_argument("--out", default="kept.npz", help="(default: %(default)s)")

    p = sub.add_parser("train", help="train networks on a training set or on pruned subsets of it (kip prune), "
                                       "for the full data's number of steps, and report test accuracy")
    _add_dataset_args(p)
    p.add_argument("--subset", nargs="+", default=[], metavar="FILE", help="kip prune files (default: the full training set)")
    p.add_argument("--seeds", type=int, default=1, help="networks per subset; mean ± std reported (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FILE", help="JSON result; with subsets also the pruning curve, FILE.png")
    _add_recipe_args(p)

    p = sub.add_parser("sweep", help="a grid of distill / label-solve runs from a TOML or JSON file: skips finished "
                                       "cells, resumes interrupted ones, one table and plot (see kip/sweep.py)")
    p.add_argument("config", help="sweep file (.toml or .json)")
    p.add_argument("--out", default=None, help="parent folder of the sweep's runs (default: the file's out, else runs/sweeps)")
    p.add_argument("--devices", type=int, default=None, help="devices to spread cells over (default: all)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    r = train.DATA_DIET
    g = p.add_argument_group("network and training (defaults: the Data Diet recipe, SGD Nesterov 0.9, cross-entropy)")
    g.add_argument("--model", default=None, help=f"network: {', '.join(models.PRESETS)} (default: resnet18 for colour "
                                                 "images >= 16x16, convnet for other images >= 8x8, else fc1)")
    g.add_argument("--width", type=int, default=None, help="channels / hidden units (default: 64; FC nets 1024)")
    g.add_argument("--epochs", type=int, default=train.DATA_DIET_EPOCHS, help="passes over the full training set; subsets train "
                                                                "for as many steps (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=r.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=r.lr, help="(default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=r.weight_decay, help="coupled L2 (default: %(default)s)")
    g.add_argument("--schedule", choices=train.SCHEDULES, default=r.schedule,
                   help="step: lr x 0.2 at 30/60/80%% of the steps (epochs 60/120/160 of 200) (default: %(default)s)")
    g.add_argument("--augment", nargs="*", choices=train.AUGMENTATIONS, default=None,
                   help="(default: flip crop for colour images, crop for greyscale; none if given no value)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _recipe(args):
    from kip.diet import Recipe

    return Recipe(args.model, args.width, args.epochs, args.batch_size, args.lr, args.weight_decay, args.schedule,
                  None if args.augment is None else tuple(args.augment))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    t = train.TrainConfig()
    g = p.add_argument_group("--method train (finite networks; defaults: the KIP transfer recipe)")
    g.add_argument("--model", default=None, help=f"network: {', '.join(models.PRESETS)} (default: the --kernel preset's)")
    g.add_argument("--width", type=int, default=1024, help="channels / hidden units (default: %(default)s)")
    g.add_argument("--parameterization", choices=models.PARAMETERIZATIONS, default="standard", help="(default: %(default)s)")
    g.add_argument("--norm", choices=models.NORMS, default="none", help="instance: the DC/DSA ConvNet (default: %(default)s)")
    g.add_argument("--seeds", type=int, default=5, help="networks trained; mean ± std reported (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=t.steps, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=t.batch_size, help="(default: %(default)s)")
    g.add_argument("--optimizer", choices=train.OPTIMIZERS, default=t.optimizer,
                   help="sgd: momentum 0.9; either on a cosine schedule (default: %(default)s)")
    g.add_argument("--lr", type=float, default=t.lr, help="(default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=t.weight_decay, help="coupled L2 (default: %(default)s)")
    g.add_argument("--loss", choices=train.LOSSES, default=t.loss, help="(default: %(default)s)")
    g.add_argument("--augment", nargs="+", choices=train.AUGMENTATIONS, default=[], help="(default: none)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA) (default: off)")
    g.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS", help="(default: off)")
    g.add_argument("--tune", action="store_true",
                   help=f"first grid-search lr (x {', '.join(map(str, train.LR_FACTORS))}) and weight decay "
                        f"({', '.join(map(str, train.WEIGHT_DECAYS))}) on a validation split of train")
    g.add_argument("--val-size", type=int, default=train.DEFAULT_VAL_SIZE, help="validation images for --tune (at most 1/5 of train; default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--k", type=int, default=knn.DEFAULT_K, help="--method slapknn: nearest prototypes that vote (default: %(default)s)")


def _default_out(command: str, args) -> str:
    return os.path.join(DEFAULT_RUNS_DIR, f"{command}-{args.dataset}-{args.kernel}-ipc{args.ipc}-seed{args.seed}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kip import io, run  # after parsing, so --help stays fast

    try:
        if args.command == "distill":
            config = run.DistillConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(run.DistillConfig)})
            run.distill_run(config, args.out or _default_out("distill", args), resume=args.resume,
                            overwrite=args.overwrite, progress=not args.no_progress)
        elif args.command == "label-solve":
            config = run.LabelSolveConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(run.LabelSolveConfig)})
            run.label_solve_run(config, args.out or _default_out("label-solve", args), overwrite=args.overwrite)
        elif args.command == "evaluate" and args.method == "krr":
            options = run.KernelOptions(args.kernel, args.rf_models, args.rf_width, seed=args.seed)
            result = run.evaluate_run(args.distilled, args.dataset, args.data_dir, options, args.zca, args.precision,
                                      args.reg, args.block_size, max_memory=args.max_memory, devices=args.devices)
        elif args.command == "evaluate":
            from kip import transfer

            if args.method == "slapknn":
                result = transfer.slapknn_run(args.distilled, args.dataset, args.data_dir, args.zca, args.k)
            else:
                network = transfer.NetworkConfig(args.model or args.kernel, args.width, args.parameterization, args.norm)
                config = train.TrainConfig(
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                    weight_decay=args.weight_decay, loss=args.loss, augment=tuple(args.augment), mixup=args.mixup,
                    label_smoothing=args.label_smoothing)
                result = transfer.transfer_run(args.distilled, args.dataset, args.data_dir, args.zca, network, config,
                                               args.seeds, args.seed, args.tune, args.val_size, not args.no_progress)
        elif args.command in ("score", "prune", "train"):
            from kip import diet

            if args.command == "prune":
                diet.prune_run(args.scores, args.out, args.keep, args.offset, args.class_balanced, args.random, args.seed)
            elif args.command == "score":
                diet.score_run(data.load(args.dataset, args.data_dir), args.score, args.out, _recipe(args), args.runs,
                               args.epoch, args.seed, args.never_learned, args.last_layer_only, args.overwrite,
                               not args.no_progress)
            else:
                diet.train_run(data.load(args.dataset, args.data_dir), args.subset, _recipe(args), args.seeds, args.seed,
                               args.out, not args.no_progress)
        elif args.command == "sweep":
            from kip import sweep

            grid = sweep.load(args.config, args.out)
            if args.dry_run:
                for point, _ in grid.cells():
                    print(grid.cell_dir(point))
            else:
                print(sweep.write_summary(grid, sweep.run_sweep(grid, args.devices, not args.no_progress)))
        if args.command == "evaluate" and args.out:
            io.write_json(args.out, result)
    except InputError as e:
        print(f"kip: error: {e}", file=sys.stderr)
        return 2
    except run.TrainingDiverged as e:
        print(f"kip: training diverged: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
