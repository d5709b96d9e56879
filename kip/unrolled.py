"""Dataset Distillation by unrolled optimisation (DD: Wang, Zhu, Torralba, Efros, arXiv
1811.10959), as pure functions.

A step: a network (freshly initialised from the step's key, or the run's one fixed
initialisation) takes gradient-descent steps on the synthetic set, split as DD splits it into
`unroll` class-balanced batches (its distill_steps) visited `epochs` times (its distill_epochs),
each step with its own learned step size (softplus of a raw parameter, as DD's code); the
cross-entropy of the resulting network on a class-balanced real batch is
back-propagated through the whole unroll to the synthetic images and the step sizes. The unroll
is a `jax.lax.scan` whose steps are rematerialised (`jax.checkpoint`), so memory holds one set of
network parameters per step, not every step's activations.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kip import InputError, data, distill

Array = jax.Array

INITS = ("random", "fixed")  # DD's two settings: a fresh network per step, or one fixed initialisation
UNROLL = 10  # batches the synthetic set is split into, at most (DD's distill_steps: 10)
EPOCHS = 3  # passes over them (DD's distill_epochs)
STEP_SIZE = 0.02  # DD's initial learned step size
IMAGE_LR = 0.01  # Adam (betas 0.5, 0.999) on the images and step sizes (DD's --lr)
ADAM_B1 = 0.5
REAL_BATCH = 64  # real images per class for the outer loss
ITERATIONS = 1000
FIXED_INIT = 2**31 - 1  # fold_in index of the fixed initialisation's key (steps use 0, 1, ...)


@dataclasses.dataclass(frozen=True)
class Settings:
    """DD's fixed choices (static in the jitted step)."""

    ipc: int
    num_classes: int
    real_batch: int = REAL_BATCH
    unroll: int = 1  # batches per epoch; must divide ipc (see `default_unroll`)
    epochs: int = EPOCHS
    init: str = "random"

    @property
    def steps(self) -> int:
        """Gradient steps unrolled (and learned step sizes)."""
        return self.unroll * self.epochs

    def check(self) -> None:
        for name in ("ipc", "num_classes", "real_batch", "unroll", "epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.ipc % self.unroll:
            raise InputError(f"--unroll must divide the images per class (DD's batches are class-balanced), "
                             f"got {self.unroll} for {self.ipc}")
        if self.init not in INITS:
            raise InputError(f"--dd-init must be one of {', '.join(INITS)}, got {self.init!r}")


class UnrollState(NamedTuple):
    """Everything a DD run needs to continue: saving it makes a run resumable."""

    params: dict  # {'images': (n, H, W, ch), 'raw_step_sizes': (unroll * epochs,)}; step sizes softplus(raw)
    opt_state: optax.OptState
    key: Array  # base key; step t uses fold_in(key, t)
    step: Array  # int32 scalar


def default_unroll(ipc: int) -> int:
    """DD's batches per epoch for `ipc` images per class: the largest divisor of ipc up to UNROLL
    (DD: 10 batches of its images per class per step)."""
    return max(d for d in range(1, min(ipc, UNROLL) + 1) if ipc % d == 0)


def step_sizes(params: dict) -> Array:
    """The learned step sizes (steps,), positive: softplus of the raw parameters."""
    return jax.nn.softplus(params["raw_step_sizes"])


def image_optimizer(lr: float = IMAGE_LR) -> optax.GradientTransformation:
    return optax.adam(lr, b1=ADAM_B1)


def init_state(images: Array, settings: Settings, optimizer: optax.GradientTransformation, key: Array,
               step_size: float = STEP_SIZE) -> UnrollState:
    raw = jnp.full((settings.steps,), step_size, jnp.float32)
    params = {"images": jnp.asarray(images), "raw_step_sizes": raw + jnp.log(-jnp.expm1(-raw))}  # softplus^-1
    return UnrollState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))


def cross_entropy(model: nn.Module, params: dict, rest: dict, images: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of the network on images (n, ...) with integer labels (n,)."""
    logits = model.apply({"params": params, **rest}, images, train=True)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0])


def unroll_sgd(loss: Callable[[dict, Array], Array], params: dict, batches: Array, lrs: Array) -> dict:
    """Plain gradient descent p <- p - lr_t grad loss(p, batch_t) for t = 0 .. T-1, differentiable
    in everything; each step rematerialised in the backward pass. batches: any pytree with a
    leading axis T; lrs (T,)."""

    @jax.checkpoint
    def one(p, xs):
        batch, lr = xs
        g = jax.grad(loss)(p, batch)
        return jax.tree_util.tree_map(lambda a, b: a - lr.astype(a.dtype) * b, p, g), None

    return jax.lax.scan(one, params, (batches, lrs))[0]


def step_batches(images: Array, settings: Settings) -> tuple[Array, Array]:
    """The class-sorted synthetic set (C * ipc, ...) as DD's sequence of step batches: (steps,
    C * ipc / unroll, ...) images and their integer labels, batch t the (t mod unroll)-th split of
    every class (epochs repeat the splits)."""
    c, k = settings.num_classes, settings.ipc // settings.unroll
    split = images.reshape((c, settings.unroll, k) + images.shape[1:]).swapaxes(0, 1)
    split = split.reshape((settings.unroll, c * k) + images.shape[1:])
    labels = jnp.broadcast_to(jnp.repeat(jnp.arange(c), k), (settings.unroll, c * k))
    return jnp.tile(split, (settings.epochs,) + (1,) * (split.ndim - 1)), jnp.tile(labels, (settings.epochs, 1))


def dd_loss(model: nn.Module, variables: dict, params: dict, settings: Settings, real_images: Array,
            real_labels: Array) -> Array:
    """DD's outer loss: the real batch's cross-entropy (integer labels) after the unrolled
    gradient steps on the synthetic set's step batches from `variables`. params {'images',
    'raw_step_sizes'}."""
    net, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    inner = lambda p, batch: cross_entropy(model, p, rest, *batch)
    trained = unroll_sgd(inner, net, step_batches(params["images"], settings), step_sizes(params))
    return cross_entropy(model, trained, rest, real_images, real_labels)


def make_step(settings: Settings, model: nn.Module,
              optimizer: optax.GradientTransformation) -> Callable[[UnrollState, distill.TrainData], tuple[UnrollState, dict]]:
    """One DD step `(state, real) -> (state, {'loss'})`, pure and jittable."""
    settings.check()
    real_labels = jnp.repeat(jnp.arange(settings.num_classes), settings.real_batch)

    def step(state: UnrollState, real: distill.TrainData) -> tuple[UnrollState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        net_key, real_key = jax.random.split(key)
        if settings.init == "fixed":
            net_key = jax.random.fold_in(state.key, FIXED_INIT)
        variables = model.init(net_key, state.params["images"][:1])
        idx = data.per_class_sample(real_key, real.class_table, real.class_counts, settings.real_batch).reshape(-1)
        loss, grads = jax.value_and_grad(lambda p: dd_loss(model, variables, p, settings, real.images[idx],
                                                           real_labels))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return UnrollState(params, opt_state, state.key, state.step + 1), {"loss": loss}

    return step
