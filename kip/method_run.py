"""`kip distill --method dc|dsa|dm|dd|mtt|frepo`: a whole run of a distillation method that
learns through finite networks (the matching family, `kip.matching`; Dataset Distillation and
MTT, `kip.unrolled`; FRePo, `kip.frepo`), resumable, with the outputs every distillation writes
(distilled.npz, metrics.json, support.png, curve.png), judged by KRR under the chosen kernel
during the run and, on request, by a protocol's finite networks at the end."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kip import InputError, data, distill, frepo, matching, models, plots, protocols, report, run, trajectories, unrolled

METHODS = matching.METHODS + ("dd", "mtt", "frepo")
INITS = ("real", "noise")
NETWORK_CARD = "dc"  # the methods' network is the DC / DSA / DM evaluation ConvNet of this protocol card
STRATEGY_CARD = "dsa"  # ... and DSA's augmentation strategy per data set comes from this one
ITERATIONS = {**matching.ITERATIONS, "dd": unrolled.ITERATIONS, "mtt": unrolled.MTT_ITERATIONS, "frepo": frepo.ITERATIONS}
IMAGE_LR = {**matching.IMAGE_LR, "dd": unrolled.IMAGE_LR, "mtt": unrolled.MTT_IMAGE_LR, "frepo": frepo.IMAGE_LR}
REAL_BATCH = {**{m: matching.REAL_BATCH for m in matching.METHODS}, "dd": unrolled.REAL_BATCH, "frepo": frepo.REAL_BATCH}
# options that belong to some methods only (None: the method's default)
METHOD_OPTIONS = {"real_batch": ("dc", "dsa", "dm", "dd", "frepo"), "outer_loop": ("dc", "dsa"), "inner_loop": ("dc", "dsa"),
                  "strategy": ("dsa", "dm", "mtt"), "expert_dir": ("mtt",), "syn_steps": ("mtt",), "expert_epochs": ("mtt",),
                  "max_start_epoch": ("mtt",), "batch_syn": ("mtt",), "lr_lr": ("mtt",),
                  "unroll": ("dd",), "unroll_epochs": ("dd",), "net_init": ("dd",), "pool_size": ("frepo",), "max_age": ("frepo",),
                  "learn_labels": ("frepo",), "lr_decay_steps": ("frepo",), "pool_net": ("frepo",)}
# FRePo's pool: 'dc', the methods' ConvNet3 without norm (constant width); 'frepo', FRePo's own Conv
POOL_NETS = ("dc", "frepo")
FREPO_WIDTH = 128
# --val-size holds training rows out of what these read (MTT: rows its experts were recorded without)
VAL_SIZE_METHODS = METHODS


def refuse_foreign(method: str, given: dict[str, object], table: dict[str, tuple[str, ...]]) -> None:
    """One line for an option given (not None in `given`) that `method` does not use (`table`: option -> methods)."""
    for name, methods in table.items():
        if given.get(name) is not None and method not in methods:
            raise InputError(f"--{name.replace('_', '-')} applies to --method {' / '.join(methods)} only "
                             f"(this is --method {method})")


@dataclasses.dataclass(frozen=True)
class MethodConfig(run.SteppedRunOptions):
    """Options of a DC / DSA / DM / DD / MTT / FRePo run (`kip distill --method ...`); None: the method's
    default. The inherited kernel options are the KRR evaluation's (its precision: the images are float32)."""

    method: str = "dm"
    steps: int | None = None  # outer iterations (default: ITERATIONS)
    lr: float | None = None  # of the images (default: IMAGE_LR)
    real_batch: int | None = None  # real images per class per step (default: REAL_BATCH)
    outer_loop: int | None = None  # DC / DSA (default: matching.DC_LOOPS)
    inner_loop: int | None = None
    width: int | None = None  # the network's width (default: the card's, 128)
    strategy: str | None = None  # DSA strategy for dsa / dm / mtt (default: the dsa card's for the data set; mtt: 'none' is off)
    unroll: int | None = None  # DD: step batches per epoch (default: unrolled.default_unroll(ipc))
    unroll_epochs: int | None = None  # DD: passes over them (default: unrolled.EPOCHS)
    net_init: str | None = None  # DD: 'random' (a fresh network per step, default) or 'fixed'
    expert_dir: str | None = None  # MTT: the experts' folder (`kip trajectories`), required
    syn_steps: int | None = None  # MTT: synthetic steps per iteration (default: unrolled.SYN_STEPS)
    expert_epochs: int | None = None  # MTT: the expert epochs they match (default: unrolled.EXPERT_EPOCHS)
    max_start_epoch: int | None = None  # MTT: starts drawn below it (default: unrolled.MAX_START_EPOCH)
    batch_syn: int | None = None  # MTT: synthetic images per step (default: all)
    lr_lr: float | None = None  # MTT: SGD lr of the learned learning rate (default: unrolled.MTT_LR_LR)
    pool_size: int | None = None  # FRePo: networks in the pool (default: frepo.POOL_SIZE)
    max_age: int | None = None  # FRePo: steps before a network is re-initialised (default: frepo.MAX_AGE)
    learn_labels: bool | None = None  # FRePo: learn the labels (default: True)
    lr_decay_steps: int | None = None  # FRePo: cosine decay of the image lr over these steps (default: none)
    pool_net: str | None = None  # FRePo: its pool's networks, one of POOL_NETS (default: 'dc')
    init: str = "real"

    def check(self) -> None:
        super().check()
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)} here, got {self.method!r}")
        if self.init not in INITS:
            raise InputError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        refuse_foreign(self.method, {name: getattr(self, name) for name in METHOD_OPTIONS}, METHOD_OPTIONS)
        for name in ("real_batch", "outer_loop", "inner_loop", "width", "unroll", "unroll_epochs", "pool_size", "max_age",
                     "syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "lr_decay_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.steps is not None and self.steps < 0:
            raise InputError(f"--steps must be >= 0, got {self.steps}")
        for name in ("lr", "lr_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and np.isfinite(value)):
                raise InputError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if self.method == "mtt" and not self.expert_dir:
            raise InputError("--method mtt needs --expert-dir: a folder of expert trajectories (kip trajectories)")
        if self.pool_net is not None and self.pool_net not in POOL_NETS:
            raise InputError(f"--pool-net must be one of {', '.join(POOL_NETS)}, got {self.pool_net!r}")
        if self.net_init is not None and self.net_init not in unrolled.INITS:
            raise InputError(f"--net-init must be one of {', '.join(unrolled.INITS)}, got {self.net_init!r}")

    def settings(self, dataset: str, num_classes: int, smallest_class: int):
        """The method's settings (`matching.Settings`, `unrolled.Settings` or `frepo.Settings`) with
        every default resolved for this data set; the real batch is capped at the smallest class
        (as DC's get_images: a class's whole training set where it is smaller)."""
        if self.method == "mtt":
            strategy = None if self.strategy == "none" else self.strategy or trajectories.strategy_for(
                trajectories.TrajectoryConfig(), dataset)
            return unrolled.MttSettings(self.ipc, num_classes, self.syn_steps or unrolled.SYN_STEPS,
                                        self.expert_epochs or unrolled.EXPERT_EPOCHS,
                                        self.max_start_epoch or unrolled.MAX_START_EPOCH, self.batch_syn, strategy,
                                        self.lr_lr or unrolled.MTT_LR_LR)
        real_batch = min(REAL_BATCH[self.method] if self.real_batch is None else self.real_batch, smallest_class)
        if self.method == "dd":
            return unrolled.Settings(self.ipc, num_classes, real_batch, self.unroll or unrolled.default_unroll(self.ipc),
                                     self.unroll_epochs or unrolled.EPOCHS, self.net_init or "random")
        if self.method == "frepo":
            return frepo.Settings(self.ipc, num_classes, real_batch, self.pool_size or frepo.POOL_SIZE,
                                  self.max_age or frepo.MAX_AGE,
                                  learn_labels=True if self.learn_labels is None else self.learn_labels)
        outer, inner = (1, 1) if self.method == "dm" else \
            (self.outer_loop, self.inner_loop) if self.outer_loop and self.inner_loop else \
            tuple(a or b for a, b in zip((self.outer_loop, self.inner_loop), matching.default_loops(self.ipc)))
        strategy = None
        if self.method != "dc":
            strategy = self.strategy or protocols.augment_strategy(protocols.load(STRATEGY_CARD), dataset, self.ipc)
        return matching.Settings(self.method, self.ipc, num_classes, real_batch, outer, inner, strategy)

    @property
    def iterations(self) -> int:
        return ITERATIONS[self.method] if self.steps is None else self.steps

    @property
    def image_lr(self) -> float:
        return IMAGE_LR[self.method] if self.lr is None else self.lr


def networks(width: int | None, num_classes: int, im2col: bool | None = None,
             norm: str | None = None) -> tuple[models.Network, models.Network, int]:
    """The methods' network (the `NETWORK_CARD` protocol's ConvNet, at `width`; `norm` None: the
    card's instance norm), the same without its head (an embedding, first-order only: lax's
    convolutions), and the width. im2col (None: on CPU) computes the full network's convolutions as
    patch matmuls, for second-order gradients (DC, DSA, DD)."""
    p = protocols.load(NETWORK_CARD)
    im2col = jax.default_backend() == "cpu" if im2col is None else im2col
    return (protocols.network(p, num_classes, width, norm, im2col=im2col),
            protocols.network(p, num_classes, width, norm, head=False), width or p.width)


def frepo_conv(width: int | None, num_classes: int) -> tuple[models.Network, models.Network, int]:
    """FRePo's own distillation network (its `Conv`, normalization='batch'), its embedding and width:
    3 blocks of width, 2 x width, 4 x width channels (default width FREPO_WIDTH), a batch norm before
    the 2nd and 3rd, flax's default (lecun) initialisation, MNIST's first conv padded to 32 x 32."""
    width = width or FREPO_WIDTH
    build = lambda head: models.build("convnet3", num_classes, width, norm="batch", weight_init="lecun", pad_to=32,
                                      growth=2, head=head)
    return build(True), build(False), width


def display_name(method: str) -> str:
    """How the papers spell a method: DC, DSA, DM, DD, MTT, FRePo."""
    return "FRePo" if method == "frepo" else method.upper()


class Method(NamedTuple):
    """A method made ready for `loop.optimise`: its start state, its step `(state, data) -> (state,
    metrics)`, the synthetic labels of a state, what to record of its settings, the loss's name,
    and the data its step reads (None: the real training set; MTT: the experts' parameters)."""

    state: Any
    step: Callable
    labels: Callable[[Any], jax.Array]
    record: dict
    loss_label: str
    data: Any = None


def prepare_method(config: MethodConfig, settings, images: jax.Array, labels: jax.Array, key: jax.Array,
                   num_classes: int) -> tuple[Method, models.Network, int]:
    """The state and step of `config.method` from the initial images (n, H, W, ch) and one-hot
    labels (n, C), and the network it learns through (checked against the images) and its width."""
    name = display_name(config.method)
    record = {"iterations": config.iterations, "image_lr": config.image_lr, **dataclasses.asdict(settings)}
    if config.method == "frepo":
        # first-order: lax's convolutions
        if config.pool_net == "frepo":
            model, embed, width = frepo_conv(config.width, num_classes)
        else:  # the methods' network without normalisation (FRePo's default norm)
            model, embed, width = networks(config.width, num_classes, im2col=False, norm="none")
        optimizer = frepo.image_optimizer(config.image_lr, config.lr_decay_steps)
        record.update(lr_decay_steps=config.lr_decay_steps, pool_net=config.pool_net or "dc")
        state = frepo.init_state(model, settings, images, frepo.initial_labels(num_classes, config.ipc), optimizer, key)
        step = frepo.make_step(settings, model, embed, optimizer)
        method = Method(state, step, lambda s: s.params["labels"], record, f"{name} feature-regression loss")
    elif config.method == "mtt":
        # second-order gradients through the unroll: im2col on CPU, as DC's (see networks)
        experts, model = trajectories.load(config.expert_dir, num_classes, images.shape[1:],
                                           im2col=jax.default_backend() == "cpu")
        width = model.width
        if config.width is not None and config.width != width:
            raise InputError(f"--width {config.width}: the experts in {config.expert_dir} are ConvNets of width {width}")
        available = experts.params.shape[1] - 1
        if available < settings.expert_epochs + 1:
            raise InputError(f"{config.expert_dir}: experts of {available} epochs cannot cover --expert-epochs "
                             f"{settings.expert_epochs} from a start epoch")
        optimizer = unrolled.mtt_optimizer(config.image_lr, settings.lr_lr)
        state = unrolled.init_mtt_state(images, experts.meta["config"]["lr"], optimizer, key)
        step = unrolled.make_mtt_step(settings, model, experts.unravel, optimizer)
        record.update(experts=int(experts.params.shape[0]), expert_epochs_recorded=available,
                      expert_dir=os.path.abspath(config.expert_dir))
        method = Method(state, step, lambda s: labels, record, "MTT: normalised distance to the expert",
                        data=jnp.asarray(experts.params[:, : settings.max_start_epoch + settings.expert_epochs]))
    elif config.method == "dd":
        model, _, width = networks(config.width, num_classes)
        optimizer = unrolled.image_optimizer(config.image_lr)
        state = unrolled.init_state(images, settings, optimizer, key)
        method = Method(state, unrolled.make_step(settings, model, optimizer), lambda s: labels, record,
                        "DD: real cross-entropy after the unroll")
    else:
        model, embed, width = networks(config.width, num_classes)
        optimizer = matching.image_optimizer(config.image_lr)
        state = matching.init_state(images, optimizer, key)
        method = Method(state, matching.make_step(settings, model, embed, optimizer), lambda s: labels, record,
                        f"{name} matching loss")
    method.record.update(width=width, network=model.__class__.__name__, norm=model.norm, im2col=model.im2col)
    return method, model, width


def mtt_pool(config: MethodConfig) -> np.ndarray | None:
    """The rows an MTT run's --val-size draws from: those its experts never trained on (None: not MTT
    or no --val-size); `InputError` when the experts saw every training image."""
    if config.method != "mtt" or not config.val_size:
        return None
    held = trajectories.held_out(config.expert_dir)
    if held is None:
        raise InputError(f"--val-size: the experts in {config.expert_dir} trained on every training image; record "
                         "them with `kip trajectories --val-size N` to validate MTT")
    return held


def method_run(
    config: MethodConfig,
    out: str,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs DC / DSA / DM / DD / FRePo as configured, writing OUT/{distilled.npz, metrics.json,
    support.png, curve.png, checkpoint.npz}. Returns the metrics; resuming gives the same result as
    an uninterrupted run (`kip.transfer.judge_run` then trains a protocol's finite networks on it)."""
    config.check()
    code = report.provenance(allow_dirty=True)  # at the start: the tree may change while it runs
    ds = data.load(config.dataset, config.data_dir)
    real_idx = run.start_indices(config.seed, ds.y_train, ds.num_classes, config.ipc)  # class-sorted
    val_idx = data.run_validation_rows(config.seed, len(ds.y_train), config.val_size, real_idx, pool=mtt_pool(config))
    # the rows the method reads (None: all of them, without copying the training set)
    rows = None if val_idx is None else np.setdiff1d(np.arange(len(ds.y_train)), val_idx)
    y_read = ds.y_train if rows is None else ds.y_train[rows]
    settings = config.settings(ds.name, ds.num_classes, int(data.class_table(y_read, ds.num_classes)[1].min()))
    settings.check()
    networks(config.width, ds.num_classes, im2col=False)[0].check_input_shape(ds.image_shape)
    run.prepare_out(out, resume, overwrite)
    problem = run.prepare(ds, config.kernel_options, zca=False, precision=config.precision, max_memory=config.max_memory,
                          devices=config.devices)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    x_train = jnp.asarray(problem.x_train, jnp.float32)
    if config.init == "real":
        init_idx, init_images = real_idx, x_train[real_idx]
    else:
        init_idx = np.full(len(real_idx), -1)
        init_images = jax.random.normal(init_key, (len(real_idx),) + ds.image_shape, jnp.float32)
    labels = data.one_hot(np.repeat(np.arange(ds.num_classes), config.ipc), ds.num_classes, dtype=jnp.float32)
    method, model, width = prepare_method(config, settings, init_images, labels, run_key, ds.num_classes)
    state = method.state
    step_data = method.data if method.data is not None else distill.train_data(
        x_train if rows is None else x_train[rows], y_read, ds.num_classes, jnp.float32)
    config_dict = dataclasses.asdict(config)
    state, history = run.resumed(out, state, config_dict, resume, log)
    name = display_name(config.method)
    unused = ("method", "ipc", "num_classes") + (("outer_loop", "inner_loop", "net_lr", "net_batch") if config.method == "dm" else ())
    described = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(settings).items() if k not in unused and v is not None)
    net_note = " x 1, 2, 4 with batch norm (FRePo's Conv)" if config.pool_net == "frepo" else ""
    decay = f" (cosine decay to {frepo.DECAY_FLOOR:g}x over {config.lr_decay_steps} steps)" if config.lr_decay_steps else ""
    log(f"kip distill --method {config.method}: {ds.name}, {config.ipc} images/class ({config.init} start), "
        f"{config.iterations} iterations, network {model.__class__.__name__} width {width}{net_note}, image lr {config.image_lr}"
        f"{decay}, {described}; KRR evaluation with {config.kernel}")
    to_problem = lambda y: jnp.asarray(y, problem.dtype)
    kernel_name = protocols.load(NETWORK_CARD).model

    def extras_of(state) -> dict:  # what a method learns beside the set, kept with it (snapshots, distilled.npz)
        return {"step_sizes": np.asarray(unrolled.step_sizes(state.params))} if config.method == "dd" else \
            {"learned_lr": np.asarray(state.params["lr"])} if config.method == "mtt" else {}

    state, history = run.optimise_set(out, problem, config, state, history, method.step, step_data, config.iterations,
                                      lambda s: (s.params["images"], to_problem(method.labels(s))), init_idx,
                                      kernel_name, progress, log, validation=val_idx, extras_of=extras_of)
    step, final = int(state.step), history.evals[-1]
    metrics = run.run_metrics(history, step, ds, config_dict, code, method=config.method, settings=method.record)
    images = np.asarray(state.params["images"])
    title = f"{name} on {ds.name}, {config.ipc}/class, {step} iterations: KRR ({config.kernel}) test acc {100 * final['test_accuracy']:.2f}%"
    run.write_distilled(out, problem, images, np.asarray(to_problem(method.labels(state))), np.asarray(init_images),
                        init_idx, metrics, title, kernel=kernel_name, method=np.array(config.method),
                        **extras_of(state), **({} if val_idx is None else {"val_indices": val_idx}))
    plots.learning_curve(os.path.join(out, "curve.png"), history.losses, history.evals,
                         f"{name} on {ds.name}, {config.ipc} images/class", loss_label=method.loss_label)
    log(f"KRR ({config.kernel}) test accuracy {100 * final['test_accuracy']:.2f}% (initial: "
        f"{100 * metrics['initial_test_accuracy']:.2f}%); {step} iterations in {history.seconds:.1f} s; wrote {out}/")
    return metrics
