"""Kernel Inducing Points (KIP) and Label Solve (Nguyen, Chen, Lee, ICLR 2021), as pure functions.

A KIP step: draw a class-balanced target batch on the device, predict it by KRR from the
support set, and take an optax step on the support images (and labels, if learned).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from kip import data, krr, parallel
from kip.kernels import rf

Array = jax.Array


class KipState(NamedTuple):
    """Everything a KIP run needs to continue: saving it makes a run resumable."""

    params: dict  # {'images': (n_s, H, W, C), 'labels': (n_s, C)}
    opt_state: optax.OptState
    key: Array  # base key; step t uses fold_in(key, t)
    step: Array  # int32 scalar


class TrainData(NamedTuple):
    """The training set on the device, with the class index table for sampling."""

    images: Array  # (N, H, W, C)
    targets: Array  # (N, C) centred one-hot
    class_table: Array  # (C, max_count) int32
    class_counts: Array  # (C,) int32
    stats: Array | None = None  # cached kernel_fn.input_stats(images): one pass less per step


def mse(pred: Array, y_target: Array, params: dict) -> Array:
    """KIP's loss per target row: 0.5 * mean over classes of (pred - y)^2. (n, C) -> (n,)."""
    return 0.5 * jnp.mean((pred - y_target) ** 2, axis=1)


def platt(pred: Array, y_target: Array, params: dict) -> Array:
    """RFAD's "Platt" loss per target row: cross-entropy of softmax(tau * pred) against the
    target's class, tau = exp(params['log_temperature']) learned with the images. (n, C) -> (n,)."""
    logits = jnp.exp(params["log_temperature"]).astype(pred.dtype) * pred
    return jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, jnp.argmax(y_target, axis=1)[:, None], 1)[:, 0]


LOSSES = {"mse": mse, "platt": platt}
PLATT_INIT_TEMPERATURE = 10.0  # our choice: logits of about +-10 for the centred one-hot targets


def kip_loss(
    kernel_fn: krr.KernelMatrixFn,
    params: dict,
    x_target: Array,
    y_target: Array,
    reg: float = krr.DEFAULT_REG,
    learn_labels: bool = False,
    target_stats: Array | None = None,
    loss: str = "mse",
    mesh: Mesh | None = None,
) -> tuple[Array, Array]:
    """The mean over target rows of `LOSSES[loss]` of the KRR prediction K_ts (K_ss + ridge)^-1 y_s
    (mse: 0.5 * mean((pred - y_t)^2), KIP's), and the argmax accuracy (aux).

    params: {'images': (n_s, ...), 'labels': (n_s, C)[, 'log_temperature': () for platt]};
    x_target (n_t, ...), y_target (n_t, C).
    target_stats: the targets' cached `kernel_fn.input_stats` (kernel_fn must then take cov2).
    mesh: split the target rows over its devices (`kip.parallel`); the support is replicated.
    """
    x_s = params["images"]
    y_s = params["labels"] if learn_labels else jax.lax.stop_gradient(params["labels"])
    if isinstance(kernel_fn, rf.RandomFeatures):
        # The support's features once, for both K_ss and K_st: through two kernel calls they
        # (and their gradient) would be computed twice, most of a step's work.
        support = kernel_fn.features(x_s)
        k_ss = kernel_fn.gram(support)

        def k_st_fn(support, x_t):
            return kernel_fn.gram(support, kernel_fn.features(x_t))
    else:
        support, k_ss = x_s, kernel_fn(x_s, None)

        def k_st_fn(x_s, x_t, *stats_t):
            return kernel_fn(x_s, x_t, cov2=stats_t[0]) if stats_t else kernel_fn(x_s, x_t)
    alpha = krr.solve(k_ss, y_s, reg)
    row_loss = LOSSES[loss]

    def sums(shared, w, x_t, y_t, *stats_t):
        support, params, alpha = shared
        # K_st (n_s, n_t) rather than K_ts: the gradient then reaches x_s through a plain
        # (not transposed) matmul, which XLA:CPU runs much faster in float64.
        pred = k_st_fn(support, x_t, *stats_t).T @ alpha
        correct = jnp.argmax(pred, axis=1) == jnp.argmax(y_t, axis=1)
        return {"n": w.sum(), "loss": jnp.sum(w * row_loss(pred, y_t, params)), "correct": jnp.sum(w * correct)}

    stats = () if target_stats is None else (target_stats,)
    weights = jnp.ones(x_target.shape[0], alpha.dtype)
    s = parallel.row_sums(sums, mesh, (support, params, alpha), weights, x_target, y_target, *stats)
    return (s["loss"] / s["n"]).astype(x_s.dtype), s["correct"] / s["n"]


def init_state(
    images: Array, labels: Array, optimizer: optax.GradientTransformation, key: Array, loss: str = "mse"
) -> KipState:
    """Start of a run from an initial support set (n_s, ...) with labels (n_s, C); the Platt
    loss adds its learned log temperature."""
    params = {"images": jnp.asarray(images), "labels": jnp.asarray(labels)}
    if loss == "platt":
        params["log_temperature"] = jnp.log(jnp.asarray(PLATT_INIT_TEMPERATURE, params["images"].dtype))
    return KipState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))


def train_data(images, labels, num_classes: int, dtype, kernel_fn=None) -> TrainData:
    """Puts the training set on the device as `TrainData` (images cast to dtype). With a
    `kip.kernels.KernelFn`, also caches its per-image input statistics."""
    table, counts = data.class_table(labels, num_classes)
    images = jnp.asarray(images, dtype)
    stats = None
    if kernel_fn is not None and hasattr(kernel_fn, "input_stats"):
        stats = jax.jit(kernel_fn.input_stats)(images)
    return TrainData(images, data.one_hot(labels, num_classes, dtype=dtype), jnp.asarray(table), jnp.asarray(counts), stats)


def make_step(
    kernel_fn: krr.KernelMatrixFn,
    optimizer: optax.GradientTransformation,
    target_batch: int,
    reg: float = krr.DEFAULT_REG,
    learn_labels: bool = False,
    loss: str = "mse",
    mesh: Mesh | None = None,
) -> Callable[[KipState, TrainData], tuple[KipState, dict]]:
    """One KIP step `(state, train) -> (state, {'loss', 'accuracy'})`, pure and jittable.

    The target batch (`target_batch` images, class-balanced, fresh each step) is drawn on
    the device; when it is at least the training set, the whole set is the target. A
    random-feature kernel draws fresh networks each step from the step's key (see
    `kip.kernels.rf.for_step`). With a mesh, the target batch is split over its
    devices (`kip.parallel`); `train` and the state are then best replicated on it.
    """

    def step(state: KipState, train: TrainData) -> tuple[KipState, dict]:
        n_train = train.images.shape[0]
        key = jax.random.fold_in(state.key, state.step)
        if target_batch >= n_train:
            x_t, y_t, stats_t = train.images, train.targets, train.stats
        else:
            idx = data.balanced_sample(key, train.class_table, train.class_counts, target_batch)
            x_t, y_t = train.images[idx], train.targets[idx]
            stats_t = None if train.stats is None else train.stats[idx]
        step_kernel = rf.for_step(kernel_fn, jax.random.fold_in(key, 1))
        (loss_value, acc), grads = jax.value_and_grad(kip_loss, argnums=1, has_aux=True)(
            step_kernel, state.params, x_t, y_t, reg, learn_labels, stats_t, loss, mesh
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return KipState(params, opt_state, state.key, state.step + 1), {"loss": loss_value, "accuracy": acc}

    return step


def make_adam_step(
    kernel_fn: krr.KernelMatrixFn,
    target_batch: int,
    reg: float = krr.DEFAULT_REG,
    learn_labels: bool = False,
    loss: str = "mse",
    mesh: Mesh | None = None,
) -> Callable[[KipState, tuple[TrainData, Array]], tuple[KipState, dict]]:
    """`make_step` with Adam at an lr passed in: `(state, (train, lr)) -> (state, metrics)`. The lr
    is an argument of the compiled program, not a constant in it, so runs at other lrs (a sweep's)
    reuse the program; the optimiser state is `optax.adam`'s, as `init_state` makes it."""

    def step(state: KipState, train_and_lr: tuple[TrainData, Array]) -> tuple[KipState, dict]:
        train, lr = train_and_lr
        return make_step(kernel_fn, optax.adam(lr), target_batch, reg, learn_labels, loss, mesh)(state, train)

    return step


def make_multi_step(step: Callable, num_steps: int) -> Callable[[KipState, TrainData], tuple[KipState, dict]]:
    """`num_steps` steps in one jitted call (lax.scan); metrics come back stacked."""

    @jax.jit
    def run(state: KipState, train: TrainData):
        return jax.lax.scan(lambda s, _: step(s, train), state, None, length=num_steps)

    return run


def label_solve(
    kernel_fn: krr.KernelMatrixFn,
    x_support: Array,
    x_target: Array,
    y_target: Array,
    reg: float = krr.DEFAULT_REG,
    block_size: int = krr.DEFAULT_BLOCK,
    mesh: Mesh | None = None,
) -> Array:
    """Labels for a fixed support set that best fit the targets through KRR.

    With K_st (n_s, n_t): M = K_st K_st^T + reg/n_s I, z = M^-1 K_st y_t, and
    y_s* = (K_ss + reg/n_s I) z: the least-squares solution of K_ts (K_ss + reg/n_s I)^-1 y_s
    ~ y_t (ridge reg/n_s on z, not trace-scaled, as in the authors' notebook).
    K_st is never formed whole: M and K_st y_t are summed over target blocks (and over the
    devices of `mesh`, which split the targets between them).
    x_support (n_s, ...), x_target (n_t, ...), y_target (n_t, C) -> (n_s, C).
    """
    n_s = x_support.shape[0]
    dtype = krr.solve_dtype(x_support.dtype)

    def sums(x_s, w, x_t, y_t):
        def block_stats(xyw):
            x_b, y_b, w_b = xyw
            k_sb = kernel_fn(x_s, x_b).astype(dtype) * w_b[None, :]
            return k_sb @ k_sb.T, k_sb @ y_b.astype(dtype)

        block = min(block_size, w.shape[0])
        # Padding rows get weight 0, so they add nothing to M or K_st y_t.
        w, x_t, y_t = parallel.pad_rows(block, w, x_t, y_t)
        shape = lambda a: a.reshape((-1, block) + a.shape[1:])  # noqa: E731

        # A running sum: stacking every block's (n_s, n_s) M first would need n_t / block of them.
        def add_block(totals, xyw):
            return jax.tree_util.tree_map(jnp.add, totals, block_stats(xyw)), None

        zeros = (jnp.zeros((n_s, n_s), dtype), jnp.zeros((n_s, y_t.shape[1]), dtype))
        return jax.lax.scan(add_block, zeros, (shape(x_t), shape(y_t), shape(w)))[0]

    m, b = parallel.row_sums(sums, mesh, x_support, jnp.ones(x_target.shape[0], dtype), x_target, y_target)
    eye = jnp.eye(n_s, dtype=dtype)
    z = jnp.linalg.solve(m + (reg / n_s) * eye, b)
    return (kernel_fn(x_support, None).astype(dtype) + (reg / n_s) * eye) @ z
