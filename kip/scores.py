"""Data Diet scores per training example (Paul et al. 2021; Toneva et al. 2019): EL2N, GraNd and
forgetting, exact and batched, and the networks they are read from (trained to a chosen epoch).

`apply_fn(variables, x)` is a flax `model.apply` in eval mode (kip.models networks evaluate by
default: BatchNorm uses its running statistics), so every example is scored on its own.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip import InputError, data, krr, train

Array = jax.Array
ApplyFn = Callable[[dict, Array], Array]  # (variables, x (b, ...)) -> logits (b, C)
SCORES = ("el2n", "grand", "forgetting")
NEVER_LEARNED = ("inf", "presentations")
EL2N_BATCH = 1000  # examples per forward pass
GRAND_BATCH = 32  # examples whose per-example gradients are held at once (fastest on a 2-core CPU)


def example_loss(apply_fn: ApplyFn, params: dict, rest: dict, x: Array, y: Array) -> Array:
    """Softmax cross-entropy of one example x (H, W, C) with int label y against its one-hot label."""
    logits = apply_fn({"params": params, **rest}, x[None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _split(variables: dict) -> tuple[dict, dict]:
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def el2n(apply_fn: ApplyFn, variables: dict, x: Array, y: Array, batch_size: int = EL2N_BATCH) -> Array:
    """EL2N: || softmax(f(x_i)) - onehot(y_i) ||_2 per example. x (n, ...), int y (n,) -> (n,),
    in [0, sqrt 2]; `batch_size` examples per forward pass."""
    return _el2n(apply_fn, batch_size, variables, jnp.asarray(x), jnp.asarray(y))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _el2n(apply_fn, batch_size, variables, x, y):
    def block(xy):
        xb, yb = xy
        p = jax.nn.softmax(apply_fn(variables, xb), axis=-1)
        return jnp.linalg.norm(p - jax.nn.one_hot(yb, p.shape[-1], dtype=p.dtype), axis=-1)

    return krr.map_blocks(block, (x, y), batch_size)


def last_layer(params: dict) -> str:
    """The name of the output layer in a flax params dict: the top-level entry created last
    (the final Dense of every kip.models network)."""
    return list(params)[-1]


def grand(apply_fn: ApplyFn, variables: dict, x: Array, y: Array, batch_size: int = GRAND_BATCH,
          last_layer_only: bool = False) -> Array:
    """GraNd: || d loss(f(x_i), y_i) / d params ||_2 per example, over all parameters (or, with
    `last_layer_only`, over the output layer's only: the cheap variant, not the paper's score).
    Per-example gradients by jax.vmap(jax.grad(example_loss)), `batch_size` at a time, so memory
    is batch_size x parameters whatever n. x (n, ...), int y (n,) -> (n,)."""
    return _grand(apply_fn, batch_size, last_layer_only, variables, jnp.asarray(x), jnp.asarray(y))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _grand(apply_fn, batch_size, last_layer_only, variables, x, y):
    params, rest = _split(variables)
    if last_layer_only:
        head = last_layer(params)
        body = {k: v for k, v in params.items() if k != head}
        wrt, loss = params[head], lambda p, xi, yi: example_loss(apply_fn, {**body, head: p}, rest, xi, yi)
    else:
        wrt, loss = params, lambda p, xi, yi: example_loss(apply_fn, p, rest, xi, yi)

    def block(xy):
        grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(wrt, *xy)
        squares = [jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in jax.tree_util.tree_leaves(grads)]
        return jnp.sqrt(sum(squares))

    return krr.map_blocks(block, (x, y), batch_size)


# --------------------------------------------------------------------------- forgetting


class Forgetting(NamedTuple):
    """Per-example forgetting statistics (Toneva et al. 2019), each (n,)."""

    correct: Array  # bool: classified correctly at its last presentation (False before the first)
    learned: Array  # bool: classified correctly at some presentation
    forgets: Array  # int32: correct -> incorrect transitions between consecutive presentations
    presentations: Array  # int32


def forgetting_init(n: int) -> Forgetting:
    """No example presented yet."""
    false, zero = jnp.zeros(n, bool), jnp.zeros(n, jnp.int32)
    return Forgetting(false, false, zero, zero)


@jax.jit
def forgetting_update(state: Forgetting, indices: Array, correct: Array) -> Forgetting:
    """One presentation of the examples `indices` (b,), distinct, classified `correct` (b,) bool.
    An incorrect first presentation is not a forgetting event (nothing was learned yet)."""
    correct = correct.astype(bool)
    forgot = state.correct[indices] & ~correct
    return Forgetting(state.correct.at[indices].set(correct),
                      state.learned.at[indices].set(state.learned[indices] | correct),
                      state.forgets.at[indices].add(forgot.astype(jnp.int32)),
                      state.presentations.at[indices].add(1))


def forgetting_scores(state: Forgetting, never_learned: str = "inf") -> np.ndarray:
    """(n,) float64: forgetting events per example; an example never classified correctly
    scores inf (the Data Diet code's convention) or, with never_learned='presentations', its
    number of presentations (Toneva et al.'s code)."""
    if never_learned not in NEVER_LEARNED:
        raise InputError(f"never_learned must be one of {', '.join(NEVER_LEARNED)}, got {never_learned!r}")
    forgets = np.asarray(state.forgets, np.float64)
    unlearned = ~np.asarray(state.learned)
    fill = np.inf if never_learned == "inf" else np.asarray(state.presentations, np.float64)
    return np.where(unlearned, fill, forgets)


# --------------------------------------------------------------------------- scores of a trained network


def score_network(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: train.TrainConfig,
    key: Array,
    scores: tuple[str, ...] = ("el2n",),
    epoch: int = 20,
    never_learned: str = "inf",
    last_layer_only: bool = False,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Trains `model` on images (n, H, W, C) with int labels (n,) by `config` (cross-entropy on
    one-hot labels; `key` fixes init and data order) for the first `epoch` epochs of its schedule,
    and scores every example: {name: (n,) float64} for each of `scores` (SCORES). EL2N and GraNd
    are read from the network at that epoch (epoch 0: at initialisation); forgetting counts the
    events of those epochs' presentations (train mode, augmented, before each update)."""
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise InputError(f"scores must be among {', '.join(SCORES)}, got {unknown[0] if unknown else 'none'!r}")
    if config.loss != "xent":
        raise InputError("scores are defined for the cross-entropy loss: use loss='xent'")
    n = len(images)
    per_epoch = train.epoch_steps(n, config.batch_size)
    if epoch < 0 or epoch * per_epoch > config.steps:
        raise InputError(f"epoch must lie in 0..{config.steps // per_epoch} (the schedule's epochs), got {epoch}")
    targets = np.asarray(data.one_hot(labels, model.num_classes, centred=False))
    tracker = [forgetting_init(n)]

    def track(step, indices, metrics):
        tracker[0] = forgetting_update(tracker[0], indices, metrics["example_correct"])

    result = train.fit(model, images, targets, config, key, progress=progress, desc="score",
                       on_step=track if "forgetting" in scores else None, stop_after=epoch * per_epoch)
    x, y = jnp.asarray(images, jnp.float32), jnp.asarray(labels)
    compute = {
        "el2n": lambda: el2n(model.apply, result.variables, x, y),
        "grand": lambda: grand(model.apply, result.variables, x, y, last_layer_only=last_layer_only),
        "forgetting": lambda: forgetting_scores(tracker[0], never_learned),
    }
    return {name: np.asarray(compute[name](), np.float64) for name in scores}
