"""Distillation through unrolled training, as pure functions: Dataset Distillation (DD: Wang,
Zhu, Torralba, Efros, arXiv 1811.10959) and Matching Training Trajectories (MTT: Cazenavette et
al., CVPR 2022), sharing `unroll_sgd`.

A step: a network (freshly initialised from the step's key, or the run's one fixed
initialisation) takes gradient-descent steps on the synthetic set, split as DD splits it into
`unroll` class-balanced batches (its distill_steps) visited `epochs` times (its distill_epochs),
each step with its own learned step size (softplus of a raw parameter, as DD's code); the
cross-entropy of the resulting network on a class-balanced real batch is
back-propagated through the whole unroll to the synthetic images and the step sizes. The unroll
is a `jax.lax.scan` whose steps are rematerialised (`jax.checkpoint`), so memory holds one set of
network parameters per step, not every step's activations.

An MTT step: an expert (`kip.trajectories`) and a start epoch are drawn; from the expert's
parameters there, `syn_steps` SGD steps on (DSA-augmented) synthetic batches at a learned
learning rate should land near the expert's parameters `expert_epochs` later: the loss is the
squared distance normalised by the expert's own move, back-propagated through the unroll to the
images and the learning rate.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kip import InputError, augment, data, distill

Array = jax.Array

INITS = ("random", "fixed")  # DD's two settings: a fresh network per step, or one fixed initialisation
UNROLL = 10  # batches the synthetic set is split into, at most (DD's distill_steps: 10)
EPOCHS = 3  # passes over them (DD's distill_epochs)
STEP_SIZE = 0.02  # DD's initial learned step size
IMAGE_LR = 0.01  # Adam (betas 0.5, 0.999) on the images and step sizes (DD's --lr)
ADAM_B1 = 0.5
REAL_BATCH = 64  # real images per class for the outer loss
OUTER_BLOCK = 128  # real images per block of the outer loss (its memory: one block's activations)
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
    return blocked_cross_entropy(first_order(model), trained, rest, real_images, real_labels)


def blocked_cross_entropy(model: nn.Module, params: dict, rest: dict, images: Array, labels: Array,
                          block: int = OUTER_BLOCK) -> Array:
    """`cross_entropy` over equal blocks of at most `block` images, each rematerialised in the
    backward pass: the activations of one block in memory, not the whole real batch's."""
    n = images.shape[0]
    size = max(d for d in range(1, min(n, block) + 1) if n % d == 0)
    split = lambda a: a.reshape((n // size, size) + a.shape[1:])
    one = jax.checkpoint(lambda xy: cross_entropy(model, params, rest, *xy))
    return jnp.mean(jax.lax.map(one, (split(images), split(labels))))


def first_order(model: nn.Module) -> nn.Module:
    """The network with lax's convolutions, for a loss differentiated once (the real batch's, after
    the unroll): im2col's patch matrices, which the unroll's second-order gradients need on CPU,
    would take 9x the activations' memory over a whole real batch."""
    return model.clone(im2col=False) if getattr(model, "im2col", False) else model


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


# --------------------------------------------------------------------------- MTT

SYN_STEPS = 20  # MTT's defaults: synthetic steps per iteration,
EXPERT_EPOCHS = 3  # ... expert epochs they should cover,
MAX_START_EPOCH = 25  # ... and the latest start epoch (exclusive)
MTT_IMAGE_LR = 1000.0  # SGD (momentum 0.5) on the images (MTT's lr_img)
MTT_LR_LR = 1e-5  # SGD (momentum 0.5) on the synthetic learning rate (MTT's lr_lr)
MTT_ITERATIONS = 5000


@dataclasses.dataclass(frozen=True)
class MttSettings:
    """MTT's fixed choices (static in the jitted step)."""

    ipc: int
    num_classes: int
    syn_steps: int = SYN_STEPS
    expert_epochs: int = EXPERT_EPOCHS
    max_start_epoch: int = MAX_START_EPOCH  # starts drawn from [0, max_start_epoch)
    batch_syn: int | None = None  # synthetic images per step (None: all; must divide them)
    strategy: str | None = None  # DSA augmentation of the synthetic batches (per image), None: off
    lr_lr: float = MTT_LR_LR

    @property
    def batch(self) -> int:
        return self.batch_syn or self.ipc * self.num_classes

    def check(self) -> None:
        for name in ("ipc", "num_classes", "syn_steps", "expert_epochs", "max_start_epoch", "batch"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if (self.ipc * self.num_classes) % self.batch:
            raise InputError(f"--batch-syn must divide the {self.ipc * self.num_classes} synthetic images, got {self.batch}")
        if self.strategy is not None:
            augment.parse_strategy(self.strategy)


def mtt_optimizer(image_lr: float = MTT_IMAGE_LR, lr_lr: float = MTT_LR_LR) -> optax.GradientTransformation:
    """MTT's two SGD optimisers (momentum 0.5): the images at image_lr, the learning rate at lr_lr."""
    return optax.multi_transform({"images": optax.sgd(image_lr, momentum=0.5), "lr": optax.sgd(lr_lr, momentum=0.5)},
                                 {"images": "images", "lr": "lr"})


def init_mtt_state(images: Array, lr: float, optimizer: optax.GradientTransformation, key: Array) -> UnrollState:
    """The start of an MTT run: the images and the synthetic learning rate (MTT: the experts')."""
    params = {"images": jnp.asarray(images), "lr": jnp.asarray(lr, jnp.float32)}
    return UnrollState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))


def trajectory_loss(start: Array, end: Array, target: Array) -> Array:
    """MTT's normalised distance |end - target|^2 / |start - target|^2 (flat parameter vectors)."""
    return jnp.sum((end - target) ** 2) / jnp.sum((start - target) ** 2)


def synthetic_batches(key: Array, n: int, batch: int, steps: int) -> Array:
    """(steps, batch) indices as MTT visits the synthetic set: consecutive chunks of a random
    permutation, a fresh permutation whenever one is used up."""
    chunks = n // batch

    def one(t):
        order = jax.random.permutation(jax.random.fold_in(key, t // chunks), n)
        return jax.lax.dynamic_slice_in_dim(order, (t % chunks) * batch, batch)

    return jax.vmap(one)(jnp.arange(steps))


def mtt_loss(model: nn.Module, unravel: Callable, params: dict, start: Array, target: Array, settings: MttSettings,
             key: Array) -> Array:
    """MTT's loss: from the expert's flat parameters `start`, `syn_steps` SGD steps on the
    synthetic set (params {'images', 'lr'}; class-sorted, `ipc` per class) at the learned lr,
    then `trajectory_loss` against the expert's `target` parameters."""
    labels = jnp.repeat(jnp.arange(settings.num_classes), settings.ipc)
    order_key, aug_key = jax.random.split(key)
    idx = synthetic_batches(order_key, labels.shape[0], settings.batch, settings.syn_steps)
    keys = jax.random.split(aug_key, settings.syn_steps)

    def inner(flat, batch):
        i, k = batch
        x = params["images"][i]
        if settings.strategy:
            x = augment.dsa(k, x, settings.strategy)
        return cross_entropy(model, unravel(flat), {}, x, labels[i])

    lrs = jnp.broadcast_to(params["lr"], (settings.syn_steps,))
    return trajectory_loss(start, unroll_sgd(inner, start, (idx, keys), lrs), target)


def make_mtt_step(settings: MttSettings, model: nn.Module, unravel: Callable,
                  optimizer: optax.GradientTransformation) -> Callable[[UnrollState, Array], tuple[UnrollState, dict]]:
    """One MTT iteration `(state, experts) -> (state, {'loss'})`, pure and jittable: an expert
    and a start epoch drawn uniformly (start < max_start_epoch, capped so that the target
    start + expert_epochs exists); experts (E, epochs + 1, P) from `kip.trajectories.load`."""
    settings.check()

    def step(state: UnrollState, experts: Array) -> tuple[UnrollState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        expert_key, start_key, loss_key = jax.random.split(key, 3)
        e = jax.random.randint(expert_key, (), 0, experts.shape[0])
        s = jax.random.randint(start_key, (), 0, min(settings.max_start_epoch, experts.shape[1] - settings.expert_epochs))
        start, target = experts[e, s], experts[e, s + settings.expert_epochs]
        loss, grads = jax.value_and_grad(mtt_loss, argnums=2)(model, unravel, state.params, start, target, settings,
                                                             loss_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return UnrollState(params, opt_state, state.key, state.step + 1), {"loss": loss}

    return step
