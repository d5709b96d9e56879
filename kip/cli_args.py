"""What the `kip` command line accepts: its parser (every command's options and their help) and
the tables saying which `kip distill` / `kip evaluate` options belong to which method. `kip.cli`
runs the commands."""

from __future__ import annotations

import argparse

from kip import data, distill, frepo, kernels, knn, krr, method_run, models, optim, preprocess, scores, train, unrolled
from kip.kernels import rf
from kip.release import LAYOUTS

DEFAULT_RUNS_DIR = "runs"
KERNEL_COMMANDS = ("distill", "label-solve", "sweep")
DISTILL_METHODS = ("kip", "label-solve") + method_run.METHODS
NETWORKED = method_run.METHODS  # the methods that distil with finite networks
_STEPPED = ("kip",) + NETWORKED
# `kip distill` options that belong to some methods only (default None: given or not is known): the options of
# every stepped run, KIP's own, then method_run's table (whose FRePo `learn_labels` KIP shares)
DISTILL_OPTIONS = {
    **dict.fromkeys(("steps", "lr", "eval_every", "checkpoint_every", "resume", "snapshots", "max_seconds", "clock"), _STEPPED),
    **dict.fromkeys(("target_batch", "loss", "get", "rf_resample", "init_from"), ("kip",)),
    "val_size": ("kip",) + method_run.VAL_SIZE_METHODS, "zca": ("kip", "label-solve"), "target_size": ("label-solve",),
    "width": NETWORKED, "init": NETWORKED,
    **{name: ("kip",) * (name == "learn_labels") + methods for name, methods in method_run.METHOD_OPTIONS.items()},
}
KIP_DEFAULTS = {"steps": 1000, "lr": 0.04, "eval_every": 100, "resume": False, "target_batch": 5000, "learn_labels": False,
                "loss": "mse", "get": "ntk", "rf_resample": True, "zca": False, "snapshots": False, "clock": "wall",
                "val_size": 0}


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=data.DEFAULT_DATASET,
                   help="data set name: 'digits' is embedded; others are read from DIR/NAME.npz or TFDS (default: %(default)s)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder holding NAME.npz (keys x_train, y_train, x_test, y_test)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p)
    p.add_argument("--kernel", default="fc1",
                   help=f"kernel preset: {', '.join(kernels.PRESETS)}; {rf.PREFIX}NAME: the random-feature NNGP "
                        f"estimate of preset NAME, e.g. {rf.PREFIX}convnet3 (default: %(default)s)")
    p.add_argument("--rf-models", type=int, default=rf.DEFAULT_MODELS,
                   help="rf- kernels: random networks per estimate (default: %(default)s)")
    p.add_argument("--rf-width", type=int, default=rf.DEFAULT_WIDTH,
                   help="rf- kernels: channels / hidden units of each network; features in float32, "
                        "Gram matrix and ridge solve in float64 (default: %(default)s)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices the targets / test set are split over, data-parallel (default: all visible)")
    p.add_argument("--zca", action="store_true", default=None, help="ZCA-whiten after standardisation (KIP ConvNet recipe)")
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


def _version() -> str:
    """The installed package's version (an uninstalled checkout: 'unknown')."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kip")
    except PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kip", description="Dataset distillation with infinite-width kernels.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="learn a small support set: KIP (default), Label Solve, the matching "
                                         "methods DC, DSA and DM, Dataset Distillation (DD) or FRePo")
    _add_data_args(p)
    p.add_argument("--method", choices=DISTILL_METHODS, default="kip",
                   help="kip: Kernel Inducing Points; label-solve: closed-form labels for real images; dc / dsa: "
                        "gradient matching (without / with siamese augmentation); dm: distribution matching; dd: "
                        "Dataset Distillation (unrolled gradient steps); mtt: trajectory matching (experts from kip "
                        "trajectories); frepo: feature regression with a model pool; the "
                        "kernel (--kernel) judges every method by KRR (default: %(default)s)")
    p.add_argument("--ipc", type=int, default=10, help="images per class in the support set (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (dc / dsa / dm: outer iterations); 0 evaluates the initial real images "
                        "(default: kip 1000, dc / dsa 1000, dm 20000, dd 1000, mtt 5000, frepo 5000)")
    p.add_argument("--lr", type=float, default=None,
                   help="kip: Adam learning rate (default 0.04); dc / dsa / dm: SGD (momentum 0.5) on the images "
                        "(default 0.1 / 0.1 / 1); dd: Adam (0.01); mtt: SGD momentum 0.5 (1000); "
                        "frepo: LAMB (3e-4)")
    p.add_argument("--seed", type=int, default=0, help="support initialisation, target batches and random networks")
    p.add_argument("--eval-every", type=int, default=None, help="steps between test evaluations and checkpoints (default: 100)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints, when more often than evaluations (default: at each evaluation)")
    p.add_argument("--snapshots", action="store_true", default=None,
                   help="also keep the set of every checkpoint: OUT/snapshots/step-N.npz with the seconds spent so far "
                        "(equal-compute tables)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop once the steps took this many seconds (compilation included, evaluations not): an "
                        "equal-compute budget; --steps stays the upper bound")
    p.add_argument("--clock", default=None, metavar="{wall,cpu}",
                   help="how --max-seconds and the snapshots' seconds are counted: elapsed time, or this process's "
                        "CPU time, which other jobs on the machine barely change (default: wall)")
    p.add_argument("--val-size", type=int, default=None,
                   help="training images held out of the real data the run reads (none of the set's sources; mtt: "
                        "drawn from those its experts were recorded without, kip trajectories --val-size) and judged by "
                        "KRR at every evaluation, to choose an lr or a step count on (metrics.json: val_accuracy, "
                        "best_val; default: 0)")
    p.add_argument("--eval-protocol", default=None, metavar="NAME",
                   help="also train the finite networks of this protocol (kip protocols) on the result, beside random "
                        "real subsets; recorded in metrics.json under 'protocol'")
    p.add_argument("--eval-networks", type=int, default=None, help="--eval-protocol: networks per set (default: the card's)")
    p.add_argument("--out", default=None, help="output folder (default: runs/distill-DATASET-KERNEL-ipcN-seedS; "
                                               "dc, dsa, dm, dd, frepo: runs/distill-DATASET-METHOD-ipcN-seedS)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("--method kip")
    g.add_argument("--target-batch", type=int, default=None, help="class-balanced target images per step (default: 5000)")
    g.add_argument("--learn-labels", action="store_true", default=None, help="learn the support labels too")
    g.add_argument("--loss", choices=tuple(distill.LOSSES), default=None,
                   help="platt: cross-entropy of a learned temperature times the KRR prediction (default: mse)")
    g.add_argument("--get", choices=("ntk", "nngp"), default=None,
                   help="exact kernels: KIP with the network's NTK or its NNGP (rf- kernels estimate the NNGP) "
                        "(default: ntk)")
    g.add_argument("--rf-fixed", dest="rf_resample", action="store_false", default=None,
                   help="rf- kernels: the same random networks every step (default: fresh ones each step)")
    g.add_argument("--init-from", default=None, metavar="FILE",
                   help="start from this distilled set (images and labels, e.g. a random-feature run's distilled.npz) "
                        "instead of real images: fine-tuning under another kernel")
    g = p.add_argument_group("--method label-solve")
    g.add_argument("--target-size", type=int, default=None, help="training images to fit (default: all)")
    g = p.add_argument_group("--method dc / dsa / dm / dd / mtt / frepo (the networks: the dc protocol's ConvNet; frepo: without its norm)")
    g.add_argument("--width", type=int, default=None, help="the network's channels (default: 128, the papers')")
    g.add_argument("--real-batch", type=int, default=None,
                   help="real images per class per step (default: dc / dsa / dm 256, dd 64, frepo 100)")
    g.add_argument("--outer-loop", type=int, default=None, help="dc / dsa: image updates per network (default: DC's "
                                                                "per-size table, 1 / 10 / 50 at 1 / 10 / 50 per class)")
    g.add_argument("--inner-loop", type=int, default=None, help="dc / dsa: epochs the network trains on the synthetic set "
                                                                "between them (default: DC's table, 1 / 50 / 10)")
    g.add_argument("--strategy", default=None, help="dsa / dm / mtt: DSA augmentation families joined by '_' (default: the dsa "
                                                    "protocol's for the data set, e.g. color_crop_cutout_scale_rotate)")
    g.add_argument("--init", choices=method_run.INITS, default=None, help="start from real images or noise (default: real)")
    g.add_argument("--unroll", type=int, default=None, help="dd: class-balanced batches the synthetic set is split into, "
                                                            "one gradient step each (DD's distill_steps; default: the "
                                                            "largest divisor of --ipc up to 10)")
    g.add_argument("--unroll-epochs", type=int, default=None, help="dd: passes over those batches, each step with its "
                                                                   "own learned step size (default: 3)")
    g.add_argument("--net-init", choices=unrolled.INITS, default=None,
                   help="dd: a fresh network every step, or one fixed initialisation (default: random)")
    g.add_argument("--expert-dir", default=None, metavar="DIR", help="mtt: expert trajectories (kip trajectories); "
                                                                      "the network is theirs")
    g.add_argument("--syn-steps", type=int, default=None, help="mtt: SGD steps on the synthetic set per iteration "
                                                               "(default: 20)")
    g.add_argument("--expert-epochs", type=int, default=None, help="mtt: expert epochs those steps should cover (default: 3)")
    g.add_argument("--max-start-epoch", type=int, default=None, help="mtt: start epochs drawn below it (default: 25)")
    g.add_argument("--batch-syn", type=int, default=None, help="mtt: synthetic images per step (default: all)")
    g.add_argument("--lr-lr", type=float, default=None, help="mtt: SGD lr of the learned learning rate (default: 1e-5)")
    g.add_argument("--pool-size", type=int, default=None, help="frepo: networks in the model pool (default: 10)")
    g.add_argument("--max-age", type=int, default=None, help="frepo: steps a pool network trains before it is "
                                                             "re-initialised (default: 100)")
    g.add_argument("--lr-decay-steps", type=int, default=None, metavar="N",
                   help=f"frepo: cosine decay of the image lr to {frepo.DECAY_FLOOR:g}x over N steps, as FRePo's (default: constant, "
                        "so a run extends on resume; with --max-seconds set N to the steps the budget reaches)")
    g.add_argument("--fixed-labels", dest="learn_labels", action="store_false", default=None,
                   help="frepo: keep the one-hot labels (default: learned)")
    g.add_argument("--pool-net", default=None,
                   help=f"frepo: the pool's networks, one of {', '.join(method_run.POOL_NETS)}: 'dc', the methods' "
                        "ConvNet3 without norm at --width; 'frepo', FRePo's own Conv: --width x 1, 2, 4 channels "
                        "(default 128) with batch norm (default: dc)")

    p = sub.add_parser("trajectories", help="record expert trajectories for --method mtt: ConvNets trained on the "
                                            "real data, parameters after every epoch (resumable)")
    _add_dataset_args(p)
    p.add_argument("--experts", type=int, default=10, help="networks to train (default: %(default)s; MTT: 100)")
    p.add_argument("--epochs", type=int, default=50, help="epochs each (default: %(default)s, MTT's)")
    p.add_argument("--width", type=int, default=None, help="the ConvNet's channels (default: 128)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate, no momentum (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--strategy", default=None, help="DSA augmentation per image, or 'none' (default: the dsa protocol's "
                                                    "for the data set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=0, help="training images held out of the experts' data, which "
                                                           "kip distill --method mtt --val-size may then validate on "
                                                           "(default: none)")
    p.add_argument("--out", default=None, help="output folder (default: runs/trajectories-DATASET-widthW)")
    p.add_argument("--overwrite", action="store_true", help="replace trajectories of other options in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("label-solve", help="closed-form labels for a class-balanced real support set")
    _add_data_args(p)
    p.add_argument("--ipc", type=int, default=10, help="images per class in the support set (default: %(default)s)")
    p.add_argument("--target-size", type=int, default=None, help="training images to fit (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: runs/label-solve-DATASET-KERNEL-ipcN-seedS)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")

    p = sub.add_parser("evaluate", help="test accuracy of a distilled set (ours, the authors' release or another "
                                          "codebase's): KRR, finite networks under a protocol, or SLaPkNN")
    p.add_argument("--distilled", required=True, metavar="FILE", help="an .npz with 'images' and 'labels'")
    _add_dataset_args(p)
    p.add_argument("--method", choices=("krr", "train", "slapknn"), default="krr",
                   help="krr: kernel ridge regression with --kernel; train: finite networks under --protocol; "
                        "slapknn: soft-label prototype kNN (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the result as JSON here")
    _add_release_args(p)
    _add_evaluate_args(p)

    p = sub.add_parser("protocols", help="the named finite-network evaluation protocols and what each reproduces")
    p.add_argument("name", nargs="?", default=None, help="show one protocol's card in full (a name or a .toml file)")

    p = sub.add_parser("export", help="write a distilled set channel-first (PyTorch) with its preprocessing, "
                                        "readable with numpy alone")
    p.add_argument("--distilled", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE", help="the .npz to write")
    p.add_argument("--dataset", default=None, help="for a set without its own preprocessing: the data set to fit it on")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    _add_release_args(p)

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
    p.add_argument("--overwrite", action="store_true",
                   help="replace cells whose folders hold runs of other options (default: list them and stop)")
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
    g.add_argument("--schedule", choices=optim.SCHEDULES, default=r.schedule,
                   help="step: lr x 0.2 at 30/60/80%% of the steps (epochs 60/120/160 of 200) (default: %(default)s)")
    g.add_argument("--augment", nargs="*", choices=train.AUGMENTATIONS, default=None,
                   help="(default: flip crop for colour images, crop for greyscale; none if given no value)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def recipe(args):
    from kip.diet import Recipe

    return Recipe(args.model, args.width, args.epochs, args.batch_size, args.lr, args.weight_decay, args.schedule,
                  None if args.augment is None else tuple(args.augment))


def _add_release_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preprocess", choices=preprocess.RECIPES, default=None,
                   help="the preprocessing of a set that records none (another codebase's): standardize; kip-zca "
                        "(per-image normalisation, then ZCA: KIP); zca (ZCA of the standardised images: RFAD, MTT, "
                        "FRePo); none (default: the file's own, else standardize)")
    p.add_argument("--zca-strength", type=float, default=preprocess.ZCA_STRENGTH,
                   help="ZCA regulariser, times tr(cov) / d (default: %(default)s)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="nchw: channel-first (PyTorch) images; auto: "
                                                                     "detected from the shape (default: %(default)s)")


# `kip evaluate` options that belong to some methods only (default None: given or not is known)
EVALUATE_OPTIONS = {
    "kernel": ("krr",), "rf_models": ("krr",), "rf_width": ("krr",), "devices": ("krr",), "precision": ("krr",),
    "reg": ("krr",), "block_size": ("krr",), "max_memory": ("krr",), "hard_labels": ("krr",),
    "protocol": ("train",), "matched": ("train",), "model": ("train",), "width": ("train",), "norm": ("train",),
    "epochs": ("train",), "steps": ("train",), "networks": ("train",), "networks_per_subset": ("train",),
    "baseline_subsets": ("train",), "lr": ("train",), "weight_decay": ("train",), "label_scale": ("train",),
    "batch_size": ("train",), "augment": ("train",), "val_size": ("train",), "val_per_class": ("train",),
    "patience": ("train",), "tune_lr": ("train",), "tune_weight_decay": ("train",), "cache_dir": ("train",),
    "vectorize": ("train",), "val_from_set": ("train",), "k": ("slapknn",), "seed": ("krr", "train"),
}


def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--method krr")
    g.add_argument("--kernel", default=None, help="kernel preset, or rf-NAME for random features (default: fc1)")
    g.add_argument("--rf-models", type=int, default=None, help=f"rf- kernels (default: {rf.DEFAULT_MODELS})")
    g.add_argument("--rf-width", type=int, default=None, help=f"rf- kernels (default: {rf.DEFAULT_WIDTH})")
    g.add_argument("--devices", type=int, default=None, help="devices the test set is split over (default: all)")
    g.add_argument("--precision", choices=("float64", "float32"), default=None, help="(default: float64)")
    g.add_argument("--reg", type=float, default=None, help=f"ridge, times tr(K)/n (default: {krr.DEFAULT_REG})")
    g.add_argument("--block-size", type=int, default=None, help=f"test rows per kernel block (default: {krr.DEFAULT_BLOCK})")
    g.add_argument("--max-memory", type=_size, default=None, metavar="SIZE", help="see kip distill")
    g.add_argument("--hard-labels", action="store_const", const=True, default=None,
                   help="regress on one-hot labels (the argmax of each of the set's label rows) in place of its own: "
                        "how much of its accuracy its images carry without its learned labels")
    g = p.add_argument_group("--method train: finite networks under a protocol card (kip protocols), with overrides "
                             "that are recorded in the result")
    g.add_argument("--protocol", default=None, help="a protocol name (kip protocols) or a .toml card (default: kip)")
    g.add_argument("--matched", action="store_true", default=None,
                   help="train the finite network of the kernel the set was distilled with (e.g. convnet3 for rf-convnet3)")
    g.add_argument("--model", default=None, help=f"network: {', '.join(models.PRESETS)}")
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--norm", choices=models.NORMS, default=None)
    g.add_argument("--epochs", type=int, default=None, help="passes over the set (replaces the card's steps)")
    g.add_argument("--steps", type=int, default=None, help="training steps (replaces the card's epochs)")
    g.add_argument("--networks", type=int, default=None, help="networks trained on the set (default: the card's)")
    g.add_argument("--baseline-subsets", type=int, default=None,
                   help="class-balanced random real subsets of the same size trained beside it (default: the card's)")
    g.add_argument("--networks-per-subset", type=int, default=None, help="(default: 1)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None, help="in the card's form (see its weight_decay_form)")
    g.add_argument("--label-scale", type=float, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--augment", default=None, help="none, flip, crop, flip_crop, dsa:STRATEGY or dc:STRATEGY")
    g.add_argument("--val-size", type=int, default=None, help="validation images (replaces the card's per-class count)")
    g.add_argument("--val-per-class", type=int, default=None)
    g.add_argument("--val-from-set", action="store_const", const=True, default=None,
                   help="draw the validation split from the training rows the set's run held out (its val_indices, "
                        "from kip distill --val-size): images its distillation never read, to choose between sets on")
    g.add_argument("--patience", type=int, default=None, help="early stopping: steps without a better validation accuracy")
    g.add_argument("--tune-lr", type=float, nargs="+", default=None, help="learning rates searched on validation")
    g.add_argument("--tune-weight-decay", type=float, nargs="+", default=None, help="weight decays searched on validation")
    g.add_argument("--cache-dir", default=None, help="keep each finished network here and reuse it (default: runs/networks)")
    g.add_argument("--vectorize", choices=("yes", "no"), default=None,
                   help="train the networks together in one vmapped call (default: on accelerators, not on CPU)")
    p.add_argument("--seed", type=int, default=None, help="krr: random-feature networks; train: networks and subsets (default: 0)")
    p.add_argument("--k", type=int, default=None, help=f"--method slapknn: nearest prototypes that vote (default: {knn.DEFAULT_K})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
