"""The one training loop for finite networks on arrays: a pure, jitted optax step
`(variables, opt_state, batch, key) -> (variables, opt_state, metrics)` and `fit` around it.

Options are composed, not special-cased: SGD + (Nesterov) momentum or Adam on a cosine or
step schedule, coupled weight decay, MSE on soft / centred labels or cross-entropy, flip / crop augmentation, mixup
(Zhang et al. 2018) and label smoothing (Szegedy et al. 2016).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from kip import InputError, krr

Array = jax.Array
Batch = tuple[Array, Array]  # images (b, H, W, C), targets (b, C)
LOSSES = ("mse", "xent")
OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("flip", "crop")
SCHEDULES = ("cosine", "step")
STEP_MILESTONES = (0.3, 0.6, 0.8)  # fractions of the steps: epochs 60 / 120 / 160 of 200 (Data Diet)
STEP_FACTOR = 0.2  # the learning rate's factor at each milestone
DEFAULT_VAL_SIZE = 5000  # the transfer recipe's validation split of train
LR_FACTORS = (0.1, 0.3, 1.0, 3.0)  # a default tuning grid: learning rates as multiples of the configured one
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)  # ... and weight decays


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults: the finite-network transfer recipe of arXiv 2107.13034
    (MSE, SGD momentum 0.9, cosine schedule, L2 1e-3, batch 100, 5000 steps); the
    learning rate (and L2) are what the recipe grid-searches: see `tune`."""

    steps: int = 5000
    batch_size: int = 100  # capped at the training set size
    lr: float = 0.1  # best of 0.01-0.3 for FC1 on 100 MNIST or digits images (1000 steps)
    optimizer: str = "sgd"  # 'sgd' (with `momentum`) or 'adam'
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (sgd)
    schedule: str = "cosine"  # 'cosine': decay to 0; 'step': x STEP_FACTOR at STEP_MILESTONES of the steps
    weight_decay: float = 1e-3  # coupled: adds weight_decay * w to each gradient (L2 of weight_decay / 2)
    loss: str = "mse"  # 'mse': 0.5 * mean over classes of (f(x) - y)^2; 'xent': softmax cross-entropy
    augment: tuple[str, ...] = ()  # any of AUGMENTATIONS
    mixup: float = 0.0  # alpha of Beta(alpha, alpha); 0 is off
    label_smoothing: float = 0.0  # epsilon; 0 is off
    eval_every: int = 0  # steps between validation evaluations; 0: at the end only

    def check(self) -> None:
        """Raises `InputError` naming the first bad option."""
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 0:
            raise InputError(f"steps and batch size must be at least 1, eval_every >= 0 (got {self.steps}, "
                             f"{self.batch_size}, {self.eval_every})")
        for name, value, choices in (("loss", self.loss, LOSSES), ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES)):
            if value not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise InputError(f"augmentation must be among {', '.join(AUGMENTATIONS)}, got {unknown[0]!r}")
        for name in ("lr", "weight_decay", "mixup", "momentum"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise InputError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} number, got {value}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")


DATA_DIET_EPOCHS = 200
DATA_DIET = TrainConfig(steps=DATA_DIET_EPOCHS * 390, batch_size=128, lr=0.1, nesterov=True, schedule="step", weight_decay=5e-4,
                        loss="xent", augment=("flip", "crop"))
"""The Data Diet recipe (Paul et al. 2021, CIFAR-10 ResNet-18): SGD Nesterov 0.9, lr 0.1 x 0.2 at
epochs 60 / 120 / 160, coupled weight decay 5e-4, batch 128, crop and flip, 200 epochs of 390 steps."""


def epoch_steps(n: int, batch_size: int) -> int:
    """Steps in one epoch of n examples: n // batch (`fit` drops the last partial batch)."""
    return n // min(batch_size, n)


def learning_rate(config: TrainConfig) -> optax.Schedule:
    """Step t -> learning rate: a cosine decay from `lr` to 0 over `steps`, or `lr` times
    STEP_FACTOR ** (milestones passed), the milestones at STEP_MILESTONES x steps (rounded)."""
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, config.steps)
    boundaries = jnp.asarray([round(f * config.steps) for f in STEP_MILESTONES])
    return lambda t: config.lr * STEP_FACTOR ** jnp.sum(t >= boundaries)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Coupled weight decay, then SGD + (Nesterov) momentum or Adam on `learning_rate(config)`."""
    schedule = learning_rate(config)
    if config.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    else:
        opt = optax.adam(schedule)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), opt) if config.weight_decay else opt


# --------------------------------------------------------------------------- batch transforms


def smooth_labels(targets: Array, epsilon: float) -> Array:
    """(n, C) -> (n, C): (1 - eps) y + eps * mean_c(y). For a probability vector this is
    label smoothing, (1 - eps) y + eps / C; for centred one-hot labels (rows summing to 0)
    it is (1 - eps) y, the same smoothing seen through the centring."""
    return (1 - epsilon) * targets + epsilon * jnp.mean(targets, axis=-1, keepdims=True)


def mixup(key: Array, images: Array, targets: Array, alpha: float) -> Batch:
    """Mixup: with one lam ~ Beta(alpha, alpha) per batch and a random pairing `perm`,
    (lam x + (1 - lam) x[perm], lam y + (1 - lam) y[perm]). Shapes are kept."""
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha, dtype=jnp.float32).astype(images.dtype)
    perm = jax.random.permutation(perm_key, images.shape[0])
    mix = lambda a: lam * a + (1 - lam) * a[perm]
    return mix(images), mix(targets.astype(images.dtype))


def augment(key: Array, images: Array, kinds: tuple[str, ...]) -> Array:
    """Random horizontal flips (probability 1/2) and / or random crops after zero-padding by
    max(1, H // 8) pixels (4 at 32x32, the usual CIFAR recipe), each image independently."""
    n, h, w, _ = images.shape
    flip_key, crop_key = jax.random.split(key)
    if "flip" in kinds:
        flipped = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    if "crop" in kinds:
        pad = max(1, h // 8)
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
        crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
        images = jax.vmap(crop)(padded, offsets)
    return images


def example_losses(logits: Array, targets: Array, loss: str) -> Array:
    """(n, C), (n, C) -> (n,): 0.5 * mean_c (f - y)^2 (KIP's MSE), or softmax cross-entropy."""
    if loss == "mse":
        return 0.5 * jnp.mean((logits - targets) ** 2, axis=-1)
    return optax.softmax_cross_entropy(logits, targets)


# --------------------------------------------------------------------------- the step


def init(model: nn.Module, config: TrainConfig, key: Array, example: Array) -> tuple[dict, optax.OptState]:
    """Initial flax variables ({'params': ..., and any state such as 'batch_stats'}) and
    optimizer state, for inputs shaped like `example` (b, H, W, C)."""
    variables = _init_variables(model, key, example)
    return variables, make_optimizer(config).init(variables["params"])


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(model, key, example):
    return model.init(key, example)


def make_step(model: nn.Module, config: TrainConfig) -> Callable[[dict, optax.OptState, Batch, Array], tuple]:
    """The jitted training step `(variables, opt_state, (images, targets), key) -> (variables,
    opt_state, metrics)`. Batch transforms run in this order on their own keys: augmentation,
    label smoothing, mixup. metrics: 'loss' (the batch mean), and per example 'example_loss'
    and 'example_correct' (argmax agreement with the transformed targets), (b,) each.
    Variables other than 'params' (e.g. 'batch_stats') are updated by the model in train mode.
    Compiled once per (model, config, shapes), however many networks are trained.
    """
    config.check()
    return functools.partial(_jitted_step, model, config)


def _step(model, config, variables, opt_state, batch, key):
    images, targets = batch
    aug_key, mix_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    if config.augment:
        images = augment(aug_key, images, config.augment)
    if config.label_smoothing:
        targets = smooth_labels(targets, config.label_smoothing)
    if config.mixup:
        images, targets = mixup(mix_key, images, targets, config.mixup)
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params):
        if state:
            logits, new_state = model.apply({"params": params, **state}, images, train=True, mutable=list(state))
        else:
            logits, new_state = model.apply({"params": params}, images, train=True), {}
        per_example = example_losses(logits, targets, config.loss)
        return jnp.mean(per_example), (per_example, logits, new_state)

    (loss, (per_example, logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = make_optimizer(config).update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    correct = jnp.argmax(logits, -1) == jnp.argmax(targets, -1)
    metrics = {"loss": loss, "example_loss": per_example, "example_correct": correct}
    return {"params": params, **new_state}, opt_state, metrics


_jitted_step = jax.jit(_step, static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _epoch_step(model, config, batch, variables, opt_state, x, y, order, i, key):
    """`_step` on the i-th batch of `batch` examples of x, y in the epoch's `order`; also
    returns the batch's indices."""
    idx = jax.lax.dynamic_slice_in_dim(order, i * batch, batch)
    return (*_step(model, config, variables, opt_state, (x[idx], y[idx]), key), idx)


# --------------------------------------------------------------------------- fit and evaluate


@dataclasses.dataclass
class TrainResult:
    """What `fit` returns: the trained variables, the loss per step, validation accuracy
    at each evaluation ({'step', 'accuracy'}), wall-clock seconds (compilation included)."""

    variables: dict
    losses: np.ndarray  # (steps,)
    val: list[dict]
    seconds: float

    @property
    def diverged(self) -> bool:
        return not bool(np.all(np.isfinite(self.losses)))


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
    """Trains `model` on images (n, H, W, C) with targets (n, C) for `config.steps` steps of
    `config.batch_size` examples, in per-epoch random orders (the last partial batch of an
    epoch is dropped). The same key gives the same result. With val_images / val_labels
    ((m, ...), (m,) int), records validation accuracy every `eval_every` steps and at the end.
    on_step(step, indices (b,), metrics) is called after each step (per-example statistics).
    stop_after: run only the first `stop_after` steps of the `config.steps` schedule (a network
    part-way through training, e.g. for scores at an early epoch; 0: the initial network).
    """
    config.check()
    steps = config.steps if stop_after is None else stop_after
    if not 0 <= steps <= config.steps:
        raise InputError(f"stop_after must lie in 0..{config.steps} (the schedule's steps), got {stop_after}")
    check_training_set(model, images, targets, config.loss)
    x = jnp.asarray(images, jnp.float32)
    y = jnp.asarray(targets, jnp.float32)
    n = len(x)
    batch = min(config.batch_size, n)
    per_epoch = epoch_steps(n, batch)
    init_key, order_key, step_key = jax.random.split(key, 3)
    start = time.perf_counter()
    variables, opt_state = init(model, config, init_key, x[:1])

    losses, val = [], []
    bar = tqdm(total=steps, disable=not progress, desc=desc, unit="step", file=sys.stderr, leave=False)
    for t in range(steps):
        if t % per_epoch == 0:
            order = jax.random.permutation(jax.random.fold_in(order_key, t // per_epoch), n)
        variables, opt_state, metrics, idx = _epoch_step(model, config, batch, variables, opt_state, x, y, order,
                                                         t % per_epoch, jax.random.fold_in(step_key, t))
        losses.append(metrics["loss"])
        if on_step is not None:
            on_step(t, idx, metrics)
        done = t + 1
        if val_images is not None and ((config.eval_every and done % config.eval_every == 0) or done == steps):
            val.append({"step": done, "accuracy": accuracy(model, variables, val_images, val_labels)})
        if progress and (done % 100 == 0 or done == steps):
            bar.set_postfix(loss=f"{float(metrics['loss']):.4g}", **({"val_acc": f"{val[-1]['accuracy']:.4f}"} if val else {}))
        bar.update(1)
    bar.close()
    losses = np.asarray(jax.device_get(losses), np.float64).reshape(steps)
    return TrainResult(variables, losses, val, time.perf_counter() - start)


def validation_split(key: Array, n: int, size: int = DEFAULT_VAL_SIZE) -> np.ndarray:
    """`min(size, n // 5)` random indices of n training examples, held out for validation."""
    size = min(size, n // 5)
    if size < 1:
        raise InputError(f"no room for a validation split in {n} training examples")
    return np.asarray(jax.random.permutation(key, n)[:size])


def tune(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    key: Array,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    lrs: tuple[float, ...] | None = None,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[TrainConfig, list[dict]]:
    """Grid search over learning rate (default: `LR_FACTORS` times config.lr) and weight
    decay: one network per pair, all from `key`, scored by accuracy on val_images (m, ...)
    against int val_labels (m,); a diverged network scores -1. Returns `config` with the best
    pair (the first in grid order on ties) and the grid [{'lr', 'weight_decay', 'val_accuracy'}]."""
    lrs = tuple(config.lr * f for f in LR_FACTORS) if lrs is None else lrs
    grid = []
    for lr in lrs:
        for wd in weight_decays:
            trial = dataclasses.replace(config, lr=lr, weight_decay=wd, eval_every=0)
            result = fit(model, images, targets, trial, key, val_images, val_labels, progress=progress,
                         desc=f"lr {lr:g} wd {wd:g}")
            acc = -1.0 if result.diverged else result.val[-1]["accuracy"]
            grid.append({"lr": lr, "weight_decay": wd, "val_accuracy": acc})
            if log:
                log(f"  tune lr {lr:g}, weight decay {wd:g}: validation accuracy "
                    + ("diverged" if acc < 0 else f"{100 * acc:.2f}%"))
    best = max(grid, key=lambda g: g["val_accuracy"])  # max keeps the first of equals
    return dataclasses.replace(config, lr=best["lr"], weight_decay=best["weight_decay"]), grid


def predict(model: nn.Module, variables: dict, images: np.ndarray, block_size: int = 1000) -> Array:
    """Outputs (n, C) of the network in eval mode, `block_size` images at a time."""
    x = jnp.asarray(images, jnp.float32)
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"no images to predict (shape {x.shape})")
    model.check_input_shape(x.shape[1:])
    return _predict(model, variables, x, block_size)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict(model, variables, x, block_size):
    return krr.map_blocks(lambda xb: model.apply(variables, xb, train=False), x, block_size)


def accuracy(model: nn.Module, variables: dict, images: np.ndarray, labels: np.ndarray, block_size: int = 1000) -> float:
    """Argmax accuracy of the network on images (n, ...) against int labels (n,)."""
    pred = predict(model, variables, images, block_size)
    return float(jnp.mean(jnp.argmax(pred, -1) == jnp.asarray(labels)))
