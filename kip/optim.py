"""How a finite network's weights move: the learning-rate schedules (cosine, step, constant),
weight decay towards zero or the initial weights, momentum reset at the schedule's steps (DC's
evaluation), and the optax optimizer a `kip.train.TrainConfig` names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kip import InputError

if TYPE_CHECKING:
    from kip.train import TrainConfig

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
DECAY_TARGETS = ("zero", "init")
STEP_MILESTONES = (0.3, 0.6, 0.8)  # fractions of the steps: epochs 60 / 120 / 160 of 200 (Data Diet)
STEP_FACTOR = 0.2  # the learning rate's factor at each milestone
Array = jax.Array


def check_schedule(config: TrainConfig) -> None:
    """Raises `InputError` for a schedule option out of range (milestones, warm-up, final lr)."""
    if not all(0 < m < 1 for m in config.milestones):
        raise InputError(f"milestones are fractions of the steps in (0, 1), got {config.milestones}")
    if config.warmup_steps < 0 or not 0 <= config.final_lr <= 1:
        raise InputError(f"warmup_steps must be >= 0 and final_lr in [0, 1], got {config.warmup_steps}, {config.final_lr}")
    if config.warmup_steps and config.schedule != "cosine":
        raise InputError(f"warmup_steps applies to the cosine schedule only, not {config.schedule!r}")


def milestone_steps(config: TrainConfig) -> tuple[int, ...]:
    """The steps at which a 'step' schedule multiplies the learning rate by step_factor."""
    return tuple(round(f * config.steps) for f in config.milestones) if config.schedule == "step" else ()


def learning_rate(config: TrainConfig, lr: float | Array | None = None) -> optax.Schedule:
    """Step t -> learning rate: `lr` (default config.lr) decayed by a cosine to final_lr * lr over
    `steps`, or times step_factor ** (milestones passed), or constant. With `warmup_steps` w
    (cosine only), it first rises linearly from 0 to lr over w steps and the cosine takes the
    remaining steps - w (FRePo's evaluation: 500 steps, then a cosine to 0.01 lr)."""
    lr = config.lr if lr is None else lr
    if config.schedule == "cosine":
        w, floor = config.warmup_steps, config.final_lr
        length = max(config.steps - w, 1)

        def cosine(t):
            decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(t - w, 0, length) / length))
            after = lr * (floor + (1 - floor) * decay)
            return jnp.where(t < w, lr * t / max(w, 1), after) if w else after

        return cosine
    if config.schedule == "constant":
        return lambda t: lr * jnp.ones_like(t, dtype=jnp.float32)
    boundaries = jnp.asarray(milestone_steps(config))
    return lambda t: lr * config.step_factor ** jnp.sum(t >= boundaries)


class _DecayState(NamedTuple):
    ref: Any  # the weights decay pulls towards (zeros, or the initial weights)


def decayed_weights(weight_decay: float | Array, towards_init: bool) -> optax.GradientTransformation:
    """Adds weight_decay * (w - w_ref) to each gradient; w_ref is 0 or the weights at `init`."""
    def init(params):
        return _DecayState(params if towards_init else None)

    def update(grads, state, params):
        ref = state.ref if towards_init else jax.tree_util.tree_map(jnp.zeros_like, params)
        return jax.tree_util.tree_map(lambda g, p, r: g + weight_decay * (p - r), grads, params, ref), state

    return optax.GradientTransformation(init, update)


def reset_at(inner: optax.GradientTransformation, steps: tuple[int, ...]) -> optax.GradientTransformation:
    """`inner` (the momentum) with its state re-initialised before the updates of the given steps
    (PyTorch code that builds a new optimizer when it decays the learning rate)."""
    def init(params):
        return (jnp.zeros([], jnp.int32), inner.init(params))

    def update(grads, state, params=None):
        count, inner_state = state
        fresh = inner.init(params)
        reset = jnp.any(count == jnp.asarray(steps, jnp.int32)) if steps else jnp.array(False)
        inner_state = jax.tree_util.tree_map(lambda f, s: jnp.where(reset, f, s), fresh, inner_state)
        updates, inner_state = inner.update(grads, inner_state, params)
        return updates, (count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: TrainConfig, lr: float | Array | None = None,
                   weight_decay: float | Array | None = None) -> optax.GradientTransformation:
    """Weight decay (towards `decay_to`), then SGD + (Nesterov) momentum or Adam on
    `learning_rate(config, lr)`; lr and weight_decay default to the config's (arrays are fine:
    one network's values inside a vmapped step)."""
    if config.optimizer == "sgd":  # optax.sgd and optax.adam, with their moments apart from the schedule
        moments = optax.trace(decay=config.momentum, nesterov=config.nesterov) if config.momentum else optax.identity()
    else:
        moments = optax.scale_by_adam()
    if config.reset_momentum:
        moments = reset_at(moments, milestone_steps(config))
    opt = optax.chain(moments, optax.scale_by_learning_rate(learning_rate(config, lr)))
    wd = config.weight_decay if weight_decay is None else weight_decay
    if isinstance(wd, (int, float)) and wd == 0 and config.decay_to == "zero":
        return opt
    return optax.chain(decayed_weights(wd, config.decay_to == "init"), opt)
