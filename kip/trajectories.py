"""Expert trajectories for trajectory matching (MTT: Cazenavette et al., CVPR 2022): networks
trained on the real training set, their parameters recorded after every epoch.

`record` writes a folder: meta.json (the options, the network and the preprocessing) and one
expert_NNN.npz per expert holding `params` (epochs + 1, P): the flattened float32 parameters at
the start and after each epoch (one row per epoch: the compact form MTT's distillation reads),
the test accuracy after each epoch and the seconds its training took so far (elapsed, and this
process's CPU time: `cpu_seconds`). With `val_size` the experts train without that many training
rows (meta.json's `held_out`): rows nothing in MTT has seen, which its validation may then use. Each epoch is written atomically as it ends, and its
randomness comes from (seed, expert, epoch), so an interrupted recording resumes to what an
uninterrupted one writes. MTT's experts train with plain SGD (no momentum: nothing but the
parameters carries over between epochs).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from kip import InputError, data, io, loop, models, preprocess, protocols, train

EXPERTS = 10  # MTT's commands: 100
EPOCHS = 50  # MTT's train_epochs
LR = 0.01  # MTT's lr_teacher: SGD, no momentum, no weight decay
BATCH = 256
NETWORK_CARD = "dc"  # MTT's ConvNet is DC's
STRATEGY_CARD = "dsa"  # DSA augmentation per image while the experts train, the card's strategy per data set
META = "meta.json"


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
    """Options of `kip trajectories`."""

    dataset: str = data.DEFAULT_DATASET
    data_dir: str | None = None
    experts: int = EXPERTS
    epochs: int = EPOCHS
    width: int | None = None  # the ConvNet's width (None: the card's, 128)
    lr: float = LR
    batch_size: int = BATCH
    strategy: str | None = None  # DSA strategy (None: the dsa card's for the data set; 'none': no augmentation)
    seed: int = 0
    val_size: int = 0  # training rows held out of the experts' data (meta.json 'held_out'): MTT's validation

    def check(self) -> None:
        for name in ("experts", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.val_size < 0:
            raise InputError(f"--val-size must be >= 0, got {self.val_size}")
        if self.width is not None and self.width < 1:
            raise InputError(f"--width must be at least 1, got {self.width}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")


def network(width: int | None, num_classes: int, im2col: bool = False) -> models.Network:
    """The experts' network: the `NETWORK_CARD` protocol's ConvNet at `width`."""
    return protocols.network(protocols.load(NETWORK_CARD), num_classes, width, im2col=im2col)


def strategy_for(config: TrajectoryConfig, dataset: str) -> str | None:
    if config.strategy == "none":
        return None
    return config.strategy or protocols.augment_strategy(protocols.load(STRATEGY_CARD), dataset, 1)


def expert_training(config: TrajectoryConfig, strategy: str | None) -> train.TrainConfig:
    """MTT's expert training: SGD at a constant lr, no momentum or weight decay, cross-entropy,
    batch 256 with the last partial batch, DSA's per-image augmentation."""
    return train.TrainConfig(steps=1, batch_size=config.batch_size, lr=config.lr, momentum=0.0, schedule="constant",
                             weight_decay=0.0, loss="xent", drop_last=False,
                             augment=(f"dsa:{strategy}",) if strategy else ())


def make_epoch(model, tconfig: train.TrainConfig, n: int) -> Callable:
    """A jitted `(net, x, y, key) -> net`: one shuffled epoch of `tconfig` over x (n, ...), y (n, C)."""
    batch = min(tconfig.batch_size, n)
    steps = train.epoch_steps(n, batch, drop_last=False)

    @jax.jit
    def epoch(net, x, y, key):
        order = jax.random.permutation(key, n)
        body = lambda i, net: train.epoch_batch_step(model, tconfig, batch, net, x, y, order, i,
                                                     jax.random.fold_in(key, i + 1))[0]
        return jax.lax.fori_loop(0, steps, body, net)

    return epoch


def _meta(config: TrajectoryConfig, ds: data.Dataset, model: models.Network, strategy: str | None,
          prep: preprocess.Preprocessing) -> dict:
    return {"config": dataclasses.asdict(config), "dataset": ds.name, "num_classes": ds.num_classes,
            "image_shape": list(ds.image_shape), "network": NETWORK_CARD, "width": model.width, "norm": model.norm,
            "strategy": strategy, "preprocessing": "standardize",
            "mean": np.asarray(prep.mean).tolist(), "std": np.asarray(prep.std).tolist()}


def _expert_path(out: str, i: int) -> str:
    return os.path.join(out, f"expert_{i:03d}.npz")


def record(config: TrajectoryConfig, out: str, overwrite: bool = False, progress: bool = True,
           log: Callable[[str], None] = print) -> dict:
    """Trains `config.experts` networks for `config.epochs` epochs each, recording their
    parameters after every epoch in `out` (see the module's docstring); resumes a folder holding
    an interrupted recording of the same options; refuses one of other options unless
    `overwrite`. Returns the meta record with the experts' final test accuracies."""
    config.check()
    ds = data.load(config.dataset, config.data_dir)
    strategy = strategy_for(config, ds.name)
    model = network(config.width, ds.num_classes)
    model.check_input_shape(ds.image_shape)
    prep = preprocess.fit(ds.x_train, "standardize")
    held = data.run_validation_rows(config.seed, len(ds.y_train), config.val_size, np.zeros(0, np.int64))
    meta = {**_meta(config, ds, model, strategy, prep), **({} if held is None else {"held_out": held.tolist()})}
    meta_path = os.path.join(out, META)
    if os.path.exists(meta_path):
        stored = io.read_json(meta_path)
        free = ("data_dir", "experts", "epochs")  # more experts or epochs extend a recording
        # a recording from before an option existed holds that option's default
        stored_config = {**dataclasses.asdict(TrajectoryConfig()), **stored.get("config", {})}
        same = {k: v for k, v in stored_config.items() if k not in free} == \
               {k: v for k, v in meta["config"].items() if k not in free}
        if not same and not overwrite:
            raise InputError(f"{out} holds trajectories of other options: pass --overwrite to replace them")
        if not same:
            for f in os.listdir(out):
                if f == META or (f.startswith("expert_") and f.endswith(".npz")):
                    os.remove(os.path.join(out, f))
    io.write_json(meta_path, meta)
    tconfig = expert_training(config, strategy)
    trained_on = np.arange(len(ds.y_train)) if held is None else np.setdiff1d(np.arange(len(ds.y_train)), held)
    x = jnp.asarray(prep.apply(ds.x_train[trained_on]), jnp.float32)
    y = data.one_hot(ds.y_train[trained_on], ds.num_classes, centred=False)
    x_test = jnp.asarray(prep.apply(ds.x_test), jnp.float32)
    epoch = make_epoch(model, tconfig, len(x))
    base = jax.random.PRNGKey(config.seed)
    bar = tqdm(total=config.experts * config.epochs, disable=not progress, unit="epoch", file=sys.stderr)
    finals, spent, spent_cpu = [], [], []
    for i in range(config.experts):
        key = jax.random.fold_in(base, i)
        net = train.init_state(model, tconfig, jax.random.fold_in(key, 0), x[:1])
        flat, unravel = ravel_pytree(net.variables["params"])
        rows, accs, seconds, cpu = [np.asarray(flat, np.float32)], [], [], []
        path = _expert_path(out, i)
        if os.path.exists(path):  # an expert recorded in part (or whole): continue from its last epoch
            stored = io.read_npz(path)
            rows, accs = list(stored["params"][: config.epochs + 1]), list(stored["test_accuracy"][: config.epochs])
            seconds = list(stored["seconds"][: config.epochs])
            cpu = list(stored["cpu_seconds"][: config.epochs]) if "cpu_seconds" in stored else [np.nan] * len(seconds)
            net = net._replace(variables={**net.variables, "params": unravel(jnp.asarray(rows[-1]))})
        bar.update(len(rows) - 1)
        for e in range(len(rows) - 1, config.epochs):
            elapsed = loop.stopwatch()
            net = epoch(net, x, y, jax.random.fold_in(key, e + 1))
            rows.append(np.asarray(ravel_pytree(net.variables["params"])[0], np.float32))
            took = elapsed()
            seconds.append((seconds[-1] if seconds else 0.0) + took["wall"])
            cpu.append((cpu[-1] if cpu else 0.0) + took["cpu"])
            accs.append(float(train.accuracy(model, net.variables, x_test, ds.y_test)))
            io.write_npz(path, params=np.stack(rows), test_accuracy=np.asarray(accs, np.float32),
                         seconds=np.asarray(seconds, np.float64), cpu_seconds=np.asarray(cpu, np.float64))
            bar.update(1)
            bar.set_postfix(expert=i, test_acc=f"{accs[-1]:.4f}")
        finals.append(accs[-1] if accs else None)
        spent.append(seconds[-1] if seconds else 0.0)
        spent_cpu.append(cpu[-1] if cpu else 0.0)
    bar.close()
    log(f"kip trajectories: {config.experts} experts x {config.epochs} epochs on {ds.name}"
        f"{'' if held is None else f' ({len(trained_on)} training images, {len(held)} held out)'} (ConvNet width {model.width}, "
        f"SGD lr {config.lr}, batch {config.batch_size}, augmentation {strategy or 'none'}); final test accuracy "
        f"{100 * np.mean(finals):.2f}% (mean over experts); {sum(spent) / 60:.1f} minutes of training; wrote {out}/")
    return {**meta, "final_test_accuracy": finals, "seconds": spent, "cpu_seconds": spent_cpu}


def held_out(out: str) -> np.ndarray | None:
    """The sorted training rows the experts in `out` never trained on (`val_size`); None: they saw every row."""
    rows = _read_meta(out).get("held_out")
    return None if rows is None else np.asarray(rows, np.int64)


def _read_meta(out: str) -> dict:
    """The experts' meta.json in `out`; `InputError` when the folder holds none."""
    meta_path = os.path.join(out, META)
    if not os.path.exists(meta_path):
        raise InputError(f"{out} holds no expert trajectories (no {META}): record them with `kip trajectories`")
    return io.read_json(meta_path)


class Trajectories(NamedTuple):
    """Recorded experts, as MTT's distillation reads them."""

    params: np.ndarray  # (experts, epochs + 1, P) float32
    unravel: Callable  # a flat (P,) vector -> the network's params pytree
    meta: dict


def load(out: str, num_classes: int, image_shape: tuple[int, ...], epochs: int | None = None,
         im2col: bool = False) -> tuple[Trajectories, models.Network]:
    """The finished experts in `out` (their first `epochs` + 1 rows; None: all) and their network.
    `InputError` when the folder holds none, or experts of another data shape."""
    meta = _read_meta(out)
    if meta["num_classes"] != num_classes or tuple(meta["image_shape"]) != tuple(image_shape):
        raise InputError(f"{out}: experts of {meta['dataset']} ({meta['num_classes']} classes, images "
                         f"{tuple(meta['image_shape'])}), not of this data set")
    want = meta["config"]["epochs"] if epochs is None else epochs
    if want > meta["config"]["epochs"]:
        raise InputError(f"{out}: the experts were recorded for {meta['config']['epochs']} epochs, {want} are needed")
    stacks = []
    for i in range(meta["config"]["experts"]):
        path = _expert_path(out, i)
        if os.path.exists(path):
            params = io.read_npz(path)["params"]
            if len(params) >= want + 1:
                stacks.append(params[: want + 1])
    if not stacks:
        raise InputError(f"{out} holds no expert recorded for {want} epochs: finish `kip trajectories` first")
    model = network(meta["width"], num_classes, im2col=im2col)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)))["params"]
    flat, unravel = ravel_pytree(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), template))
    if stacks[0].shape[1] != flat.shape[0]:
        raise InputError(f"{out}: the experts' parameters do not fit the ConvNet of width {meta['width']}")
    return Trajectories(np.stack(stacks), unravel, meta), model
