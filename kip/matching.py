"""The matching family of distillation methods, as pure functions: Dataset Condensation by
gradient matching (DC: Zhao, Mopuri, Bilen, ICLR 2021), DC with Differentiable Siamese
Augmentation (DSA: Zhao & Bilen, ICML 2021) and Distribution Matching (DM: Zhao & Bilen, WACV 2023).

One step is one of the papers' outer iterations: a freshly initialised network, real batches of
every class drawn on the device, and an SGD step on the synthetic images (DC/DSA: `outer_loop`
matching steps with `inner_loop` epochs of training the network on the synthetic set between
them). The classes are matched in one batched computation (`jax.vmap`), where the public PyTorch
code loops over them. Synthetic images are class-sorted: class c owns rows c*ipc ... (c+1)*ipc - 1.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kip import InputError, augment, data, distill, train

Array = jax.Array

METHODS = ("dc", "dsa", "dm")
IMAGE_LR = {"dc": 0.1, "dsa": 0.1, "dm": 1.0}  # SGD on the images (DM: 10 from 100 per class on)
IMAGE_MOMENTUM = 0.5
ITERATIONS = {"dc": 1000, "dsa": 1000, "dm": 20000}  # the papers' outer iterations
REAL_BATCH = 256  # real images per class per matching step
NET_LR = 0.01  # DC/DSA: SGD (no momentum) of the network between matching steps
NET_BATCH = 256
# DC's get_loops: images per class -> (outer_loop, inner_loop)
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
COSINE_EPS = 1e-6  # added to the norms' product in DC's distance


@dataclasses.dataclass(frozen=True)
class Settings:
    """A matching method's fixed choices (static in the jitted step)."""

    method: str  # 'dc', 'dsa' or 'dm'
    ipc: int
    num_classes: int
    real_batch: int = REAL_BATCH
    outer_loop: int = 1  # DC/DSA: matching steps (image updates) per network
    inner_loop: int = 1  # DC/DSA: epochs the network trains on the synthetic set between them
    strategy: str | None = None  # DSA strategy (dsa, dm); None: no augmentation (dc)
    net_lr: float = NET_LR
    net_batch: int = NET_BATCH

    def check(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"matching method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("ipc", "num_classes", "real_batch", "outer_loop", "inner_loop", "net_batch"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.strategy is not None:
            augment.parse_strategy(self.strategy)


def default_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for `ipc` images per class; `InputError` where DC defines none."""
    if ipc not in DC_LOOPS:
        raise InputError(f"DC defines its outer / inner loops for {', '.join(map(str, DC_LOOPS))} images per class, "
                         f"not {ipc}: pass --outer-loop and --inner-loop")
    return DC_LOOPS[ipc]


class MatchState(NamedTuple):
    """Everything a matching run needs to continue: saving it makes a run resumable."""

    params: dict  # {'images': (C * ipc, H, W, channels)}, class-sorted
    opt_state: optax.OptState
    key: Array  # base key; step t uses fold_in(key, t)
    step: Array  # int32 scalar


def image_optimizer(lr: float) -> optax.GradientTransformation:
    """SGD with momentum 0.5 on the synthetic images (DC, DSA, DM alike)."""
    return optax.sgd(lr, momentum=IMAGE_MOMENTUM)


def init_state(images: Array, optimizer: optax.GradientTransformation, key: Array) -> MatchState:
    params = {"images": jnp.asarray(images)}
    return MatchState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))


# --------------------------------------------------------------------------- the losses


def _weight_rows(g: Array) -> Array:
    """A weight's gradient as (out, fan_in) rows: flax conv (kh, kw, in, out), dense (in, out)."""
    return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def gradient_distance(g_real, g_syn) -> Array:
    """DC's matching distance of two gradient pytrees: over every weight (leaves of 2 or more
    dimensions; biases and norm parameters add nothing), the sum over its output rows of
    1 - <r, s> / (|r| |s| + 1e-6)."""
    total = jnp.zeros(())
    for r, s in zip(jax.tree_util.tree_leaves(g_real), jax.tree_util.tree_leaves(g_syn)):
        if r.ndim < 2:
            continue
        r, s = _weight_rows(r), _weight_rows(s)
        cos = jnp.sum(r * s, -1) / (jnp.linalg.norm(r, axis=-1) * jnp.linalg.norm(s, axis=-1) + COSINE_EPS)
        total = total + jnp.sum(1 - cos)
    return total


def _siamese(key: Array, real: Array, syn: Array, strategy: str | None) -> tuple[Array, Array]:
    """One DSA draw applied to both batches (the siamese property); no strategy: unchanged."""
    if strategy is None:
        return real, syn
    return augment.dsa(key, real, strategy, siamese=True), augment.dsa(key, syn, strategy, siamese=True)


def _siamese_per_class(key: Array, real: Array, syn: Array, strategy: str | None) -> tuple[Array, Array]:
    """`_siamese` for each class c (batches real[c], syn[c]) with its own draw, key split(key, C)[c].
    A loop over the classes (lax.map), not vmap: under vmap DSA's choice of family (lax.switch on
    a per-class index) would compute every family for every class; and not a Python loop, whose C
    copies of the augmentation took ~1 minute to compile (DM, 10 classes)."""
    if strategy is None:
        return real, syn
    keys = jax.random.split(key, real.shape[0])
    return jax.lax.map(lambda args: _siamese(*args, strategy), (keys, real, syn))


def _class_cross_entropy(model: nn.Module, params: dict, rest: dict, images: Array, label: Array) -> Array:
    """Mean cross-entropy of the network on images (b, ...) that all belong to class `label`."""
    logits = model.apply({"params": params, **rest}, images, train=True)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, label])


def dc_loss(model: nn.Module, variables: dict, real: Array, syn: Array, key: Array, strategy: str | None = None) -> Array:
    """DC's loss: for each class c, the `gradient_distance` between the gradients (with respect
    to the network's parameters) of the cross-entropy on its real batch (a constant) and on its
    synthetic images, summed over classes. real (C, b, H, W, ch), syn (C, ipc, H, W, ch); with a
    DSA `strategy`, class c's real and synthetic images see the same draw (DSA)."""
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    grad = jax.grad(_class_cross_entropy, argnums=1)

    def one_class(real_c, syn_c, label):
        g_real = jax.lax.stop_gradient(grad(model, params, rest, real_c, label))
        return gradient_distance(g_real, grad(model, params, rest, syn_c, label))

    real, syn = _siamese_per_class(key, real, syn, strategy)
    return jnp.sum(jax.vmap(one_class)(real, syn, jnp.arange(real.shape[0])))


def dm_loss(embed: nn.Module, variables: dict, real: Array, syn: Array, key: Array, strategy: str | None = None) -> Array:
    """DM's loss: sum over classes of |mean embed(real_c) - mean embed(syn_c)|^2 (the real
    mean a constant), class c's two batches under one DSA draw. embed: a network without its
    head ((n, H, W, ch) -> (n, D)); real (C, b, ...), syn (C, ipc, ...)."""

    real, syn = _siamese_per_class(key, real, syn, strategy)
    # every class's images through the network as one batch (the embedding is per image)
    mean_embedding = lambda x: jnp.mean(embed.apply(variables, x.reshape((-1,) + x.shape[2:]), train=True)
                                        .reshape(x.shape[:2] + (-1,)), axis=1)
    return jnp.sum((jax.lax.stop_gradient(mean_embedding(real)) - mean_embedding(syn)) ** 2)


# --------------------------------------------------------------------------- the step


def net_config(settings: Settings) -> train.TrainConfig:
    """How DC / DSA train the network on the synthetic set between matching steps: plain SGD on
    the cross-entropy of the hard labels, batch 256, DSA's per-image augmentation for DSA."""
    return train.TrainConfig(steps=1, batch_size=settings.net_batch, lr=settings.net_lr, momentum=0.0, schedule="constant",
                             weight_decay=0.0, loss="xent", drop_last=False,
                             augment=(f"dsa:{settings.strategy}",) if settings.method == "dsa" else ())


def real_batches(key: Array, real: distill.TrainData, per_class: int) -> Array:
    """(C, per_class, H, W, ch): each class's images drawn without replacement."""
    return real.images[data.per_class_sample(key, real.class_table, real.class_counts, per_class)]


def _train_epochs(model, config, net: train.NetState, images: Array, labels: Array, epochs: int, key: Array) -> train.NetState:
    """`epochs` shuffled epochs of `config` on (images, labels): the network between DC's matching steps."""
    n = images.shape[0]
    batch = min(config.batch_size, n)
    per_epoch = train.epoch_steps(n, batch, drop_last=False)

    def epoch(e, net):
        order = jax.random.permutation(jax.random.fold_in(key, e), n)
        body = lambda i, net: train.epoch_batch_step(model, config, batch, net, images, labels, order, i,
                                                     jax.random.fold_in(jax.random.fold_in(key, e), i + 1))[0]
        return jax.lax.fori_loop(0, per_epoch, body, net)

    return jax.lax.fori_loop(0, epochs, epoch, net)


def make_step(settings: Settings, model: nn.Module, embed: nn.Module,
              optimizer: optax.GradientTransformation) -> Callable[[MatchState, distill.TrainData], tuple[MatchState, dict]]:
    """One outer iteration `(state, real) -> (state, {'loss'})`, pure and jittable: a fresh
    network from the step's key; DM: one image step on `dm_loss` under the network without its
    head (`embed`); DC / DSA: `outer_loop` image steps on `dc_loss`, the network trained
    `inner_loop` epochs on the synthetic set between them. 'loss': the mean per class and
    matching step (as the papers print it)."""
    settings.check()
    labels = jnp.repeat(jax.nn.one_hot(jnp.arange(settings.num_classes), settings.num_classes), settings.ipc, axis=0)
    config = net_config(settings)

    def image_step(state, real_data, variables, key):
        data_key, aug_key = jax.random.split(key)
        real = real_batches(data_key, real_data, settings.real_batch)

        def loss_fn(params):
            syn = params["images"].reshape((settings.num_classes, settings.ipc) + params["images"].shape[1:])
            if settings.method == "dm":
                return dm_loss(embed, variables, real, syn, aug_key, settings.strategy)
            return dc_loss(model, variables, real, syn, aug_key, settings.strategy)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state), loss

    def step(state: MatchState, real: distill.TrainData) -> tuple[MatchState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        net_key, loop_key = jax.random.split(key)
        example = state.params["images"][:1]
        if settings.method == "dm":
            state, loss = image_step(state, real, embed.init(net_key, example), loop_key)
            return state._replace(step=state.step + 1), {"loss": loss / settings.num_classes}
        net = train.init_state(model, config, net_key, example)

        def outer(o, carry):
            state, net, total = carry
            o_key = jax.random.fold_in(loop_key, o)
            state, loss = image_step(state, real, net.variables, jax.random.fold_in(o_key, 0))
            images = jax.lax.stop_gradient(state.params["images"])
            train_net = lambda net: _train_epochs(model, config, net, images, labels, settings.inner_loop,
                                                  jax.random.fold_in(o_key, 1))
            net = jax.lax.cond(o < settings.outer_loop - 1, train_net, lambda net: net, net)
            return state, net, total + loss

        state, _, total = jax.lax.fori_loop(0, settings.outer_loop, outer, (state, net, jnp.zeros(())))
        return state._replace(step=state.step + 1), {"loss": total / (settings.num_classes * settings.outer_loop)}

    return step
