"""Neural Feature Regression with a model pool (FRePo: Zhou, Nezhadarya, Ba, NeurIPS 2022), as
pure functions.

A step: one network of a pool of `pool_size` networks at staggered training ages is drawn; the
synthetic set predicts a class-balanced real batch by kernel ridge regression on that network's
last-layer features (the linear kernel K = F F^T, ridge 1e-6 tr(K)/n); the images and learned
labels take one LAMB step on 0.5 * squared error (plus FRePo's label-margin term); then the drawn
network takes one Adam step on the synthetic set (MSE on the learned labels), or is initialised
afresh once it is older than `max_age` steps. The pool lives in the state as stacked arrays, so
a step is one jitted function and a run resumes exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kip import InputError, data, distill, krr, train

Array = jax.Array

POOL_SIZE = 10  # networks in the pool
MAX_AGE = 100  # a network is re-initialised after this many Adam steps (FRePo's max_online_updates)
NET_LR = 3e-4  # Adam on the pool's networks
IMAGE_LR = 3e-4  # LAMB on the images and labels
REAL_BATCH = 100  # real images per class per step (FRePo: 1024 drawn from the whole set)
NET_BATCH = 500  # synthetic images per network step (all of them where fewer)
ITERATIONS = 5000
RIDGE = 1e-6  # relative to tr(K)/n, as kip.krr
DECAY_FLOOR = 0.1  # FRePo's cosine decay of the image lr ends at this fraction of it


@dataclasses.dataclass(frozen=True)
class Settings:
    """FRePo's fixed choices (static in the jitted step)."""

    ipc: int
    num_classes: int
    real_batch: int = REAL_BATCH
    pool_size: int = POOL_SIZE
    max_age: int = MAX_AGE
    net_lr: float = NET_LR
    learn_labels: bool = True

    def check(self) -> None:
        for name in ("ipc", "num_classes", "real_batch", "pool_size", "max_age"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


class FrepoState(NamedTuple):
    """Everything a FRePo run needs to continue: saving it makes a run resumable."""

    params: dict  # {'images': (n, H, W, ch), 'labels': (n, C)}, class-sorted
    opt_state: optax.OptState
    pool: train.NetState  # leading axis: pool_size networks
    ages: Array  # (pool_size,) int32: Adam steps since each network's initialisation
    key: Array  # base key; step t uses fold_in(key, t)
    step: Array  # int32 scalar


def initial_labels(num_classes: int, ipc: int) -> Array:
    """FRePo's label start: the centred one-hot rows (1 - 1/C, -1/C) divided by sqrt(C / 10), class-sorted."""
    one_hot = jnp.repeat(jax.nn.one_hot(jnp.arange(num_classes), num_classes), ipc, axis=0)
    return (one_hot - 1 / num_classes) / jnp.sqrt(num_classes / 10)


def image_optimizer(lr: float = IMAGE_LR, decay_steps: int | None = None) -> optax.GradientTransformation:
    """LAMB on the images and labels. decay_steps None: a constant lr (the default, so that a run can be
    extended on resume); else FRePo's cosine decay from lr to DECAY_FLOOR x lr over decay_steps steps,
    held there after. The schedule reads the optimiser's own step count, which a checkpoint keeps."""
    if decay_steps is None:
        return optax.lamb(lr)
    return optax.lamb(optax.cosine_decay_schedule(lr, decay_steps, alpha=DECAY_FLOOR))


def net_config(settings: Settings) -> train.TrainConfig:
    """How the pool's networks train on the synthetic set: Adam, FRePo's MSE sum_c 0.5 (f - y)^2."""
    return train.TrainConfig(steps=1, batch_size=NET_BATCH, lr=settings.net_lr, optimizer="adam", schedule="constant",
                             weight_decay=0.0, loss="mse", mse_weight=0.5 * settings.num_classes)


# --------------------------------------------------------------------------- the loss


def feature_regression(f_support: Array, y_support: Array, f_target: Array, ridge: float = RIDGE) -> Array:
    """KRR with the linear kernel of features: K_ts (K_ss + ridge tr(K_ss)/n I)^-1 y_s, K = F F^T.
    f_support (n, D), y_support (n, C), f_target (m, D) -> (m, C)."""
    return (f_target @ f_support.T) @ krr.solve(f_support @ f_support.T, y_support, ridge).astype(f_target.dtype)


def label_margin(labels: Array) -> Array:
    """FRePo's label term: the mean over rows of -min(top1 - top2, 1/C), which keeps learned labels decisive."""
    top = jax.lax.top_k(labels, 2)[0]
    return jnp.mean(-jnp.minimum(top[:, 0] - top[:, 1], 1 / labels.shape[1]))


def frepo_loss(features: Callable[[Array], Array], params: dict, x_target: Array, y_target: Array,
               learn_labels: bool = True) -> tuple[Array, Array]:
    """The mean over target rows of sum_c 0.5 (pred - y)^2 of the feature regression from the
    synthetic set (params {'images', 'labels'}), plus `label_margin` when the labels are learned;
    and the argmax accuracy (aux). features: (n, H, W, ch) -> (n, D); x_target (m, ...), y_target (m, C)."""
    labels = params["labels"] if learn_labels else jax.lax.stop_gradient(params["labels"])
    f_target = jax.lax.stop_gradient(features(x_target))
    pred = feature_regression(features(params["images"]), labels, f_target)
    loss = jnp.mean(0.5 * jnp.sum((pred - y_target) ** 2, axis=-1))
    if learn_labels:
        loss = loss + label_margin(labels)
    return loss, jnp.mean(jnp.argmax(pred, -1) == jnp.argmax(y_target, -1))


# --------------------------------------------------------------------------- the step


def head_free(variables: dict, embed_params: dict) -> dict:
    """A full network's variables restricted to the parameters of its head-free twin (`embed`)."""
    return {**variables, "params": {k: v for k, v in variables["params"].items() if k in embed_params}}


def init_state(model: nn.Module, settings: Settings, images: Array, labels: Array,
               optimizer: optax.GradientTransformation, key: Array) -> FrepoState:
    """The start of a run: the synthetic set, and a pool of fresh networks with staggered ages
    (max_age // pool_size * i, as FRePo) so that they are not re-initialised together."""
    params = {"images": jnp.asarray(images), "labels": jnp.asarray(labels, images.dtype)}
    pool_key, key = jax.random.split(key)
    config = net_config(settings)
    init = lambda k: train.init_state(model, config, k, params["images"][:1])
    pool = jax.vmap(init)(jax.random.split(pool_key, settings.pool_size))
    ages = (settings.max_age // settings.pool_size) * jnp.arange(settings.pool_size, dtype=jnp.int32)
    return FrepoState(params, optimizer.init(params), pool, ages, key, jnp.zeros((), jnp.int32))


def make_step(settings: Settings, model: nn.Module, embed: nn.Module,
              optimizer: optax.GradientTransformation) -> Callable[[FrepoState, distill.TrainData], tuple[FrepoState, dict]]:
    """One FRePo step `(state, real) -> (state, {'loss', 'accuracy'})`, pure and jittable.
    model: the pool's networks (with their head); embed: the same without it (the features)."""
    settings.check()
    config = net_config(settings)
    n = settings.ipc * settings.num_classes
    batch = min(NET_BATCH, n)

    def step(state: FrepoState, real: distill.TrainData) -> tuple[FrepoState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        member_key, real_key, net_key, init_key = jax.random.split(key, 4)
        i = jax.random.randint(member_key, (), 0, settings.pool_size)
        net = jax.tree_util.tree_map(lambda a: a[i], state.pool)
        idx = data.per_class_sample(real_key, real.class_table, real.class_counts, settings.real_batch).reshape(-1)
        embed_params = jax.eval_shape(embed.init, jax.random.PRNGKey(0), state.params["images"][:1])["params"]
        # as FRePo's nn_feat_fn: train=False, so a batch norm reads its running statistics and every image's
        # features are its own (not its batch's)
        features = lambda x: embed.apply(head_free(net.variables, embed_params), x, train=False)
        (loss, accuracy), grads = jax.value_and_grad(frepo_loss, argnums=1, has_aux=True)(
            features, state.params, real.images[idx], real.targets[idx].astype(state.params["images"].dtype),
            settings.learn_labels)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def train_net(net):
            pick = jax.random.permutation(net_key, n)[:batch]
            syn = jax.lax.stop_gradient(params)
            trained = train.step(model, config, net, (syn["images"][pick], syn["labels"][pick]),
                                 jnp.ones(batch, syn["images"].dtype), jax.random.fold_in(net_key, 1))[0]
            # the pool keeps its dtypes (flax's batch-norm statistics start float32 whatever the images)
            return jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), trained, net)

        renew = lambda net: train.init_state(model, config, init_key, params["images"][:1])
        old = state.ages[i] > settings.max_age  # as FRePo: after max_age + 1 steps
        net = jax.lax.cond(old, renew, train_net, net)
        pool = jax.tree_util.tree_map(lambda a, b: a.at[i].set(b), state.pool, net)
        ages = state.ages.at[i].set(jnp.where(old, 0, state.ages[i] + 1))
        new = FrepoState(params, opt_state, pool, ages, state.key, state.step + 1)
        return new, {"loss": loss, "accuracy": accuracy}

    return step
