"""The one training loop for finite networks on arrays: a pure, jitted optax step
`(state, batch, key) -> (state, metrics)` and `fit_many` around it, which trains S networks
(seeds, learning rates, weight decays, data sets) together: vmapped in one compiled step on
accelerators, one after another on the CPU (where XLA's batched convolutions are slower).

Options are composed, not special-cased: SGD + (Nesterov) momentum or Adam on a cosine, step or
constant schedule (momentum optionally reset at the steps), weight decay towards zero or the
initial weights, MSE on (scaled) soft labels or cross-entropy, outputs centred on the initial
network, augmentation (`kip.augment`), mixup and label smoothing, validation with early stopping.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from kip import InputError, augment, krr
from kip.optim import DECAY_TARGETS, OPTIMIZERS, SCHEDULES, STEP_FACTOR, STEP_MILESTONES, check_schedule, make_optimizer

Array = jax.Array
Batch = tuple[Array, Array]  # images (b, H, W, C), targets (b, C)
LOSSES = ("mse", "xent")
AUGMENTATIONS = augment.STANDARD  # the plain choices; 'dsa:STRATEGY' and 'dc:STRATEGY' too (kip.augment.check)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults: the finite-network transfer recipe of arXiv 2107.13034
    (MSE, SGD momentum 0.9, cosine schedule, L2 1e-3, batch 100, 5000 steps); the
    learning rate (and L2) are what the recipe grid-searches."""

    steps: int = 5000
    batch_size: int = 100  # capped at the training set size
    lr: float = 0.1  # best of 0.01-0.3 for FC1 on 100 MNIST or digits images (1000 steps)
    optimizer: str = "sgd"  # 'sgd' (with `momentum`) or 'adam'
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (sgd)
    schedule: str = "cosine"  # 'cosine': decay to final_lr x lr; 'step': x step_factor at each milestone; 'constant'
    warmup_steps: int = 0  # 'cosine': first a linear rise from 0 over this many steps (see optim.learning_rate)
    final_lr: float = 0.0  # 'cosine': where the decay ends, as a fraction of lr
    milestones: tuple[float, ...] = STEP_MILESTONES  # 'step': fractions of the steps (rounded to a step)
    step_factor: float = STEP_FACTOR
    reset_momentum: bool = False  # 'step': a fresh optimizer state at each milestone (DC's evaluation)
    weight_decay: float = 1e-3  # coupled: adds weight_decay * (w - w_ref) to each gradient
    decay_to: str = "zero"  # w_ref: 'zero', or 'init' (the initial weights: RFAD)
    loss: str = "mse"  # 'mse': mse_weight * mean over classes of (f(x) - y)^2; 'xent': softmax cross-entropy
    mse_weight: float = 0.5  # KIP's 1/2; RFAD's 1
    label_scale: float = 1.0  # MSE targets scaled by s and the loss divided by s^2 (RFAD)
    centre: bool = False  # train and predict with f(x) - f0(x), f0 the frozen initial network (RFAD)
    augment: tuple[str, ...] = ()  # see kip.augment.check
    mixup: float = 0.0  # alpha of Beta(alpha, alpha); 0 is off
    label_smoothing: float = 0.0  # epsilon; 0 is off
    drop_last: bool = True  # False: each epoch's last partial batch is used too (PyTorch's DataLoader)
    eval_every: int = 0  # steps between validation evaluations; 0: at the end only
    keep_best: bool = False  # also evaluate at step 0 and keep the variables of the best validation accuracy
    patience: int = 0  # with keep_best: stop once this many steps passed without a better accuracy; 0: never

    def check(self) -> None:
        """Raises `InputError` naming the first bad option."""
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 0 or self.patience < 0:
            raise InputError(f"steps and batch size must be at least 1, eval_every and patience >= 0 (got {self.steps}, "
                             f"{self.batch_size}, {self.eval_every}, {self.patience})")
        for name, value, choices in (("loss", self.loss, LOSSES), ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES), ("decay_to", self.decay_to, DECAY_TARGETS)):
            if value not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        augment.check(tuple(self.augment))
        for name in ("lr", "weight_decay", "mixup", "momentum", "mse_weight", "label_scale", "step_factor"):
            value = getattr(self, name)
            positive = name in ("lr", "mse_weight", "label_scale")
            if not (np.isfinite(value) and value >= 0) or (positive and value == 0):
                raise InputError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")
        check_schedule(self)


DATA_DIET_EPOCHS = 200
DATA_DIET = TrainConfig(steps=DATA_DIET_EPOCHS * 390, batch_size=128, lr=0.1, nesterov=True, schedule="step", weight_decay=5e-4,
                        loss="xent", augment=("flip", "crop"))
"""The Data Diet recipe (Paul et al. 2021, CIFAR-10 ResNet-18): SGD Nesterov 0.9, lr 0.1 x 0.2 at
epochs 60 / 120 / 160, coupled weight decay 5e-4, batch 128, crop and flip, 200 epochs of 390 steps."""


def epoch_steps(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Steps in one epoch of n examples: n // batch, or ceil(n / batch) keeping the partial batch."""
    batch = min(batch_size, n)
    return n // batch if drop_last else -(-n // batch)


def example_losses(outputs: Array, targets: Array, loss: str, mse_weight: float = 0.5, label_scale: float = 1.0) -> Array:
    """(n, C), (n, C) -> (n,): mse_weight * mean_c (f - s y)^2 / s^2 (KIP's MSE at weight 1/2 and
    s = 1; RFAD's at weight 1 and s its label scale), or softmax cross-entropy."""
    if loss == "mse":
        return mse_weight * jnp.mean((outputs - label_scale * targets) ** 2, axis=-1) / label_scale**2
    return optax.softmax_cross_entropy(outputs, targets)


# --------------------------------------------------------------------------- one network's step


class NetState(NamedTuple):
    """One network's training state (a leading axis of S networks inside `fit_many`)."""

    variables: dict  # {'params': ..., and state such as 'batch_stats'}
    opt_state: optax.OptState
    init_variables: dict | None  # the frozen initial network, when outputs are centred
    lr: Array  # () this network's learning rate
    weight_decay: Array  # ()


def outputs(model: nn.Module, variables: dict, init_variables: dict | None, x: Array, train: bool = False,
            mutable: Any = False):
    """The network's outputs (b, C), minus the initial network's when it is given (centring)."""
    if mutable:
        out, new_state = model.apply(variables, x, train=train, mutable=mutable)
    else:
        out, new_state = model.apply(variables, x, train=train), {}
    if init_variables is not None:
        out = out - jax.lax.stop_gradient(model.apply(init_variables, x, train=False))
    return (out, new_state) if mutable else out


@functools.partial(jax.jit, static_argnums=(0, 1))  # eager, flax runs its initialisers op by op: ~1 s a network on CPU
def init_state(model: nn.Module, config: TrainConfig, key: Array, example: Array, lr: Array | None = None,
               weight_decay: Array | None = None) -> NetState:
    """A freshly initialised network and its optimizer state, for inputs shaped like `example`."""
    variables = model.init(key, example)
    lr = jnp.asarray(config.lr if lr is None else lr, jnp.float32)
    wd = jnp.asarray(config.weight_decay if weight_decay is None else weight_decay, jnp.float32)
    opt_state = make_optimizer(config, lr, wd).init(variables["params"])
    return NetState(variables, opt_state, variables if config.centre else None, lr, wd)


def init(model: nn.Module, config: TrainConfig, key: Array, example: Array) -> tuple[dict, optax.OptState]:
    """Initial flax variables and optimizer state of one network, for inputs shaped like `example`."""
    state = init_state(model, config, key, example)
    return state.variables, state.opt_state


def step(model: nn.Module, config: TrainConfig, state: NetState, batch: Batch, weights: Array,
         key: Array) -> tuple[NetState, dict]:
    """One optimisation step on a batch (images (b, ...), targets (b, C)) whose examples count
    with `weights` (b,) (0 for padding). Batch transforms run in this order on their own keys:
    augmentation, label smoothing, mixup. metrics: 'loss' (the weighted batch mean) and per
    example 'example_loss', 'example_correct' (argmax agreement with the transformed targets)."""
    images, targets = batch
    aug_key, mix_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    if config.augment:
        images = augment.apply(aug_key, images, tuple(config.augment))
    if config.label_smoothing:
        targets = augment.smooth_labels(targets, config.label_smoothing)
    if config.mixup:
        images, targets = augment.mixup(mix_key, images, targets, config.mixup)
    rest = {k: v for k, v in state.variables.items() if k != "params"}

    def loss_fn(params):
        variables = {"params": params, **rest}
        if rest:  # e.g. BatchNorm statistics, updated in train mode
            out, new_rest = outputs(model, variables, state.init_variables, images, train=True, mutable=list(rest))
        else:
            out, new_rest = outputs(model, variables, state.init_variables, images, train=True), {}
        per_example = example_losses(out, targets, config.loss, config.mse_weight, config.label_scale)
        return jnp.sum(weights * per_example) / jnp.sum(weights), (per_example, out, new_rest)

    params = state.variables["params"]
    (loss, (per_example, out, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = make_optimizer(config, state.lr, state.weight_decay).update(grads, state.opt_state, params)
    variables = {"params": optax.apply_updates(params, updates), **new_rest}
    correct = jnp.argmax(out, -1) == jnp.argmax(targets, -1)
    metrics = {"loss": loss, "example_loss": per_example, "example_correct": correct}
    return state._replace(variables=variables, opt_state=opt_state), metrics


def epoch_batch_step(model, config, batch, state, x, y, order, i, key):
    """`step` on the i-th batch of `batch` positions of the epoch's `order` (n,) of x, y; positions
    past n (a partial last batch) count with weight 0. Also returns the batch's indices."""
    n = order.shape[0]
    padded = jnp.concatenate([order, jnp.zeros(batch, order.dtype)])
    idx = jax.lax.dynamic_slice_in_dim(padded, i * batch, batch)
    weights = (i * batch + jnp.arange(batch) < n).astype(x.dtype)
    state, metrics = step(model, config, state, (x[idx], y[idx]), weights, key)
    return state, metrics, idx


# --------------------------------------------------------------------------- fit and evaluate


@dataclasses.dataclass
class TrainResult:
    """What `fit_many` returns for S networks (`fit`: for one, without the leading axis): the
    final variables, the loss per step (NaN after a network stopped early), validation accuracy
    at each evaluation ({'step', 'accuracy'}), wall-clock seconds (compilation included), and
    with `keep_best` the variables, step and accuracy of the best validation accuracy."""

    variables: dict
    losses: np.ndarray  # (S, steps)
    val: list[dict]
    seconds: float
    steps_run: np.ndarray  # (S,) steps each network took (fewer when it stopped early)
    init_variables: dict | None = None  # the frozen initial networks, when outputs are centred
    best_variables: dict | None = None
    best_step: np.ndarray | None = None  # (S,)
    best_accuracy: np.ndarray | None = None  # (S,)

    @property
    def diverged(self) -> bool | np.ndarray:
        """Whether a loss became NaN/inf: (S,) for several networks, a bool for one."""
        run = np.arange(self.losses.shape[-1]) < np.asarray(self.steps_run)[..., None]
        bad = np.any(run & ~np.isfinite(self.losses), axis=-1)
        return bool(bad) if bad.ndim == 0 else bad

    def network(self, i: int) -> "TrainResult":
        """The i-th network's result, without the leading axis."""
        take = lambda tree: None if tree is None else jax.tree_util.tree_map(lambda a: a[i], tree)
        pick = lambda a: None if a is None else np.asarray(a)[i]
        return TrainResult(take(self.variables), self.losses[i], [{"step": v["step"], "accuracy": float(v["accuracy"][i])}
                                                                  for v in self.val], self.seconds, pick(self.steps_run),
                           take(self.init_variables), take(self.best_variables), pick(self.best_step),
                           pick(self.best_accuracy))


def check_training_set(model: nn.Module, images: np.ndarray, targets: np.ndarray, loss: str = "mse") -> None:
    """Raises `InputError` unless `images` (n, ...) and `targets` (n, C) are a non-empty,
    finite training set for `model` (C = model.num_classes; rows are distributions for 'xent')."""
    images, targets = np.asarray(images), np.asarray(targets)
    if images.ndim < 2 or len(images) == 0:
        raise InputError(f"the training set is empty (images of shape {images.shape})")
    if targets.ndim != 2 or len(targets) != len(images):
        raise InputError(f"labels must be one row of class scores per image, ({len(images)}, C); got shape {targets.shape}")
    if targets.shape[1] != model.num_classes:
        raise InputError(f"labels have {targets.shape[1]} classes but the network has {model.num_classes} outputs")
    model.check_input_shape(images.shape[1:])
    if not (np.all(np.isfinite(images)) and np.all(np.isfinite(targets))):
        raise InputError("the training set contains NaN or inf")
    if loss == "xent" and not (np.all(targets >= -1e-6) and np.allclose(targets.sum(axis=1), 1, atol=1e-4)):
        raise InputError("cross-entropy needs labels that are probability vectors (rows >= 0 summing to 1); "
                         "use the MSE loss for centred or learned labels")


def _select(mask: Array, new, old):
    """Per network (mask (S,)): the new tree where mask is true, else the old one."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _group_step(model, config, batch, data_axis, state, x, y, order, i, keys):
    """`epoch_batch_step` for a group of networks (leading axis), data shared (data_axis None) or not (0)."""
    one = functools.partial(epoch_batch_step, model, config, batch)
    if keys.shape[0] == 1:  # a lone network runs unbatched: XLA:CPU's batched convolutions are slower
        first = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)
        data = (x, y) if data_axis is None else (x[0], y[0])
        return jax.tree_util.tree_map(lambda a: a[None], one(first(state), *data, order[0], i, keys[0]))
    return jax.vmap(one, in_axes=(0, data_axis, data_axis, 0, None, 0))(state, x, y, order, i, keys)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _group_init(model, config, data_axis, keys, x, lrs, wds):
    example = lambda xs: xs[:1]
    return jax.vmap(lambda k, xs, lr, wd: init_state(model, config, k, example(xs), lr, wd),
                    in_axes=(0, data_axis, 0, 0))(keys, x, lrs, wds)


@jax.jit
def _split3(keys):
    """Each network's key -> its (init, data order, step) keys, (S, ...) each."""
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    return split[:, 0], split[:, 1], split[:, 2]


@functools.partial(jax.jit, static_argnums=0)
def _permutations(n, keys, epoch):
    """(S, n): each network's order of its n examples in this epoch."""
    return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(keys)


_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def _fit_group(model, config, x, y, data_axis, keys, lrs, wds, steps, val, bar, on_step):
    """Trains one group of networks (one compiled step for all of them) for `steps` steps."""
    s = len(keys)
    n = x.shape[0 if data_axis is None else 1]
    batch = min(config.batch_size, n)
    per_epoch = epoch_steps(n, batch, config.drop_last)
    init_keys, order_keys, step_keys = _split3(keys)
    state = _group_init(model, config, data_axis, init_keys, x, lrs, wds)
    losses = np.full((s, steps), np.nan)
    history, active = [], np.ones(s, bool)
    steps_run = np.zeros(s, np.int64)
    best = None
    if val is not None and state.init_variables is not None:  # centred: the initial networks' outputs, once
        offsets = jnp.stack([predict(model, jax.tree_util.tree_map(lambda a: a[i], state.init_variables), val[0])
                             for i in range(s)])
        val = (*val[:2], offsets)
    if val is not None and config.keep_best:
        acc = accuracy_many(model, state.variables, *val, vectorize=s > 1)
        history.append({"step": 0, "accuracy": acc})
        best = (state.variables, np.zeros(s, np.int64), acc)
    pending = []  # device losses not yet copied to the host, with their step
    for t in range(steps):
        if t % per_epoch == 0:
            order = _permutations(n, order_keys, t // per_epoch)
        new, metrics, idx = _group_step(model, config, batch, data_axis, state, x, y, order, t % per_epoch,
                                        _fold_in(step_keys, t))
        state = new if active.all() else _select(jnp.asarray(active), new, state)
        pending.append((t, metrics["loss"]))
        steps_run += active
        if on_step is not None:
            on_step(t, idx, metrics)
        done = t + 1
        if val is not None and ((config.eval_every and done % config.eval_every == 0) or done == steps):
            acc = accuracy_many(model, state.variables, *val, vectorize=s > 1)
            history.append({"step": done, "accuracy": acc})
            if best is not None:
                better = active & (acc > best[2])
                best = (_select(jnp.asarray(better), state.variables, best[0]), np.where(better, done, best[1]),
                        np.where(better, acc, best[2]))
                if config.patience:
                    active &= done < best[1] + config.patience
        if done % 100 == 0 or done == steps or not active.any():
            for step_t, loss in pending:
                losses[:, step_t] = np.asarray(loss)
            pending = []
            finite = losses[:, t][np.isfinite(losses[:, t])]
            bar.set_postfix(loss=f"{finite.mean():.4g}" if len(finite) else "nan",
                            **({"val_acc": f"{np.mean(history[-1]['accuracy']):.4f}"} if history else {}))
        bar.update(s)
        if not active.any():
            break
    for step_t, loss in pending:
        losses[:, step_t] = np.asarray(loss)
    losses[np.arange(steps)[None, :] >= steps_run[:, None]] = np.nan
    return state, losses, history, steps_run, best


def _merge_histories(histories: list[list[dict]], sizes: list[int]) -> list[dict]:
    """One validation history for all groups of networks: accuracies (S,) at every step any group
    evaluated, NaN for networks that had stopped by then."""
    steps = sorted({v["step"] for h in histories for v in h})
    merged = []
    for t in steps:
        parts = [next((v["accuracy"] for v in h if v["step"] == t), np.full(n, np.nan)) for h, n in zip(histories, sizes)]
        merged.append({"step": t, "accuracy": np.concatenate(parts)})
    return merged


def fit_many(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    keys: Array,
    lrs: np.ndarray | None = None,
    weight_decays: np.ndarray | None = None,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    per_network_data: bool = False,
    vectorize: bool | None = None,
    progress: bool = False,
    desc: str = "train",
    on_step: Callable[[int, Array, dict], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Trains S = len(keys) networks, network i from keys[i] (its initialisation, data order and
    augmentation: the same key gives the same network, alone or among others) with learning rate
    lrs[i] and weight decay weight_decays[i] (default: the config's), for `config.steps` steps of
    `config.batch_size` examples in per-epoch random orders.

    images (n, H, W, C) and targets (n, C) are shared, or (S, n, ...) and (S, n, C) with
    `per_network_data` (e.g. several random subsets). With val_images / val_labels ((m, ...),
    (m,) int), validation accuracy is recorded every `eval_every` steps and at the end (and at
    step 0 with `keep_best`, which keeps each network's best variables; `patience` stops it).
    vectorize: all networks in one vmapped step (default: on accelerators); else one after another.
    on_step(step, indices (S, b), metrics (S, ...)) is called after each step of a group of
    networks (one network when not vectorized). stop_after: run only the first `stop_after` steps
    of the schedule (0: the initial networks)."""
    config.check()
    steps = config.steps if stop_after is None else stop_after
    if not 0 <= steps <= config.steps:
        raise InputError(f"stop_after must lie in 0..{config.steps} (the schedule's steps), got {stop_after}")
    keys = jnp.asarray(keys)
    s = len(keys)
    if s < 1:
        raise InputError("no networks to train")
    sets = zip(images, targets) if per_network_data else [(images, targets)]
    for xs, ys in sets:
        check_training_set(model, xs, ys, config.loss)
    x, y = jnp.asarray(images, jnp.float32), jnp.asarray(targets, jnp.float32)
    lrs = np.full(s, config.lr) if lrs is None else np.asarray(lrs, np.float64)
    wds = np.full(s, config.weight_decay) if weight_decays is None else np.asarray(weight_decays, np.float64)
    if lrs.shape != (s,) or wds.shape != (s,) or np.any(lrs <= 0) or np.any(wds < 0) or (per_network_data and len(x) != s):
        raise InputError(f"{s} networks need {s} positive learning rates, weight decays >= 0 (and data sets)")
    val = None if val_images is None else (jnp.asarray(val_images, jnp.float32), jnp.asarray(val_labels))
    if vectorize is None:
        vectorize = jax.default_backend() != "cpu"
    groups = [np.arange(s)] if vectorize else [np.array([i]) for i in range(s)]
    start = time.perf_counter()
    bar = tqdm(total=s * steps, disable=not progress, desc=desc, unit="step", file=sys.stderr, leave=False)
    parts = []
    for g in groups:
        data = (x, y, None) if not per_network_data else (x[g], y[g], 0)
        parts.append(_fit_group(model, config, data[0], data[1], data[2], keys[g], jnp.asarray(lrs[g], jnp.float32),
                                jnp.asarray(wds[g], jnp.float32), steps, val, bar, on_step))
    bar.close()
    cat = lambda trees: None if trees[0] is None else jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *trees)
    states = [p[0] for p in parts]
    history = _merge_histories([p[2] for p in parts], [len(g) for g in groups])
    best = [p[4] for p in parts]
    return TrainResult(
        variables=cat([st.variables for st in states]), losses=np.concatenate([p[1] for p in parts]), val=history,
        seconds=time.perf_counter() - start, steps_run=np.concatenate([p[3] for p in parts]),
        init_variables=cat([st.init_variables for st in states]),
        best_variables=None if best[0] is None else cat([b[0] for b in best]),
        best_step=None if best[0] is None else np.concatenate([b[1] for b in best]),
        best_accuracy=None if best[0] is None else np.concatenate([b[2] for b in best]))


def fit(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    key: Array,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "train",
    on_step: Callable[[int, Array, dict], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """`fit_many` for one network from `key` on images (n, H, W, C) with targets (n, C); the
    result and on_step's indices (b,) and metrics carry no network axis."""
    hook = None if on_step is None else (lambda t, idx, m: on_step(t, idx[0], jax.tree_util.tree_map(lambda a: a[0], m)))
    return fit_many(model, images, targets, config, jnp.asarray(key)[None], val_images=val_images,
                    val_labels=val_labels, progress=progress, desc=desc, on_step=hook, stop_after=stop_after).network(0)


def predict(model: nn.Module, variables: dict, images: np.ndarray, block_size: int = 1000,
            init_variables: dict | None = None) -> Array:
    """Outputs (n, C) of the network in eval mode (minus the initial network's, when given),
    `block_size` images at a time."""
    x = jnp.asarray(images, jnp.float32)
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"no images to predict (shape {x.shape})")
    model.check_input_shape(x.shape[1:])
    return _predict(model, variables, init_variables, x, block_size)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _predict(model, variables, init_variables, x, block_size):
    return krr.map_blocks(lambda xb: outputs(model, variables, init_variables, xb), x, block_size)


def accuracy(model: nn.Module, variables: dict, images: np.ndarray, labels: np.ndarray, block_size: int = 1000,
             init_variables: dict | None = None) -> float:
    """Argmax accuracy of the network on images (n, ...) against int labels (n,)."""
    pred = predict(model, variables, images, block_size, init_variables)
    return float(jnp.mean(jnp.argmax(pred, -1) == jnp.asarray(labels)))


def accuracy_many(model: nn.Module, variables: dict, images: Array, labels: Array, offsets: Array | None = None,
                  vectorize: bool | None = None, block_size: int = 1000) -> np.ndarray:
    """(S,) argmax accuracies of S networks (variables with a leading axis) on images (n, ...)
    against int labels (n,), their outputs minus `offsets` (S, n, C) when given (the initial
    networks' outputs, for centred training): vmapped (default on accelerators) or one at a time."""
    s = len(jax.tree_util.tree_leaves(variables)[0])
    if vectorize is None:
        vectorize = jax.default_backend() != "cpu"
    take = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
    x, y = jnp.asarray(images, jnp.float32), jnp.asarray(labels)
    if vectorize and s > 1:
        return np.asarray(_accuracy_vmapped(model, variables, offsets, x, y, block_size))
    return np.array([float(_accuracy(model, take(variables, i), None if offsets is None else offsets[i], x, y, block_size))
                     for i in range(s)])


@functools.partial(jax.jit, static_argnums=(0, 5))
def _accuracy(model, variables, offsets, x, y, block_size):
    pred = krr.map_blocks(lambda xb: model.apply(variables, xb, train=False), x, block_size)
    return jnp.mean(jnp.argmax(pred if offsets is None else pred - offsets, -1) == y)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _accuracy_vmapped(model, variables, offsets, x, y, block_size):
    return jax.vmap(lambda v, o: _accuracy(model, v, o, x, y, block_size))(variables, offsets)
