"""`kip distill --method dc|dsa|dm`: a whole matching run (see `kip.matching`), resumable, with
the outputs every distillation writes (distilled.npz, metrics.json, support.png, curve.png),
judged by KRR under the chosen kernel during the run and, on request, by a protocol's finite
networks at the end."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kip import InputError, data, distill, krr, loop, matching, models, plots, protocols, run
from kip.kernels import rf

INITS = ("real", "noise")
NETWORK_CARD = "dc"  # the matching network is the DC / DSA / DM evaluation ConvNet of this protocol card
STRATEGY_CARD = "dsa"  # ... and DSA's augmentation strategy per data set comes from this one


@dataclasses.dataclass(frozen=True)
class MatchConfig:
    """Options of a DC / DSA / DM run (`kip distill --method ...`); None: the method's default."""

    method: str = "dm"
    dataset: str = data.DEFAULT_DATASET
    data_dir: str | None = None
    ipc: int = 10
    steps: int | None = None  # outer iterations (default: matching.ITERATIONS)
    lr: float | None = None  # of the images (default: matching.IMAGE_LR)
    real_batch: int = matching.REAL_BATCH
    outer_loop: int | None = None  # DC / DSA (default: matching.DC_LOOPS)
    inner_loop: int | None = None
    width: int | None = None  # the matching network's width (default: the card's, 128)
    strategy: str | None = None  # DSA strategy for dsa / dm (default: the dsa card's for the data set)
    init: str = "real"
    seed: int = 0
    kernel: str = "fc1"  # KRR evaluation during the run
    precision: str = "float64"  # of the KRR evaluation (the images are float32)
    reg: float = krr.DEFAULT_REG
    eval_every: int = 100
    checkpoint_every: int | None = None  # None: at each evaluation
    block_size: int = krr.DEFAULT_BLOCK
    max_memory: float | None = None
    rf_models: int = rf.DEFAULT_MODELS
    rf_width: int = rf.DEFAULT_WIDTH
    devices: int | None = None

    @property
    def kernel_options(self) -> run.KernelOptions:
        return run.KernelOptions(self.kernel, self.rf_models, self.rf_width, seed=self.seed)

    def check(self) -> None:
        run.check_kernel(self.kernel_options)
        if self.method not in matching.METHODS:
            raise InputError(f"--method must be one of {', '.join(matching.METHODS)} here, got {self.method!r}")
        if self.init not in INITS:
            raise InputError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name in ("ipc", "real_batch", "eval_every", "block_size", "outer_loop", "inner_loop", "width", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.steps is not None and self.steps < 0:
            raise InputError(f"--steps must be >= 0, got {self.steps}")
        if self.lr is not None and not (self.lr > 0 and np.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.method == "dc" and self.strategy is not None:
            raise InputError("--strategy applies to --method dsa / dm (DC matches without augmentation)")
        if self.method == "dm" and (self.outer_loop is not None or self.inner_loop is not None):
            raise InputError("--outer-loop / --inner-loop apply to --method dc / dsa (DM trains no network)")

    def settings(self, dataset: str, num_classes: int) -> matching.Settings:
        """The method's settings with every default resolved for this data set."""
        outer, inner = (1, 1) if self.method == "dm" else \
            (self.outer_loop, self.inner_loop) if self.outer_loop and self.inner_loop else \
            tuple(a or b for a, b in zip((self.outer_loop, self.inner_loop), matching.default_loops(self.ipc)))
        strategy = None
        if self.method != "dc":
            strategy = self.strategy or protocols.for_set(protocols.load(STRATEGY_CARD), dataset, self.ipc)[0].augment.split(":", 1)[1]
        return matching.Settings(self.method, self.ipc, num_classes, self.real_batch, outer, inner, strategy)

    @property
    def iterations(self) -> int:
        return matching.ITERATIONS[self.method] if self.steps is None else self.steps

    @property
    def image_lr(self) -> float:
        return matching.IMAGE_LR[self.method] if self.lr is None else self.lr


def networks(width: int | None, num_classes: int, im2col: bool | None = None) -> tuple[models.Network, models.Network, int]:
    """The matching network (the `NETWORK_CARD` protocol's, at `width`), the same without its head
    (DM's embedding, first-order only: lax's convolutions), and the width. im2col (None: on CPU)
    computes the full network's convolutions as patch matmuls, for DC's second-order gradients."""
    p = protocols.load(NETWORK_CARD)
    width = width or p.width
    im2col = jax.default_backend() == "cpu" if im2col is None else im2col
    build = lambda head, im2col: models.build(p.model, num_classes, width, p.parameterization, p.norm,
                                              weight_init=p.weight_init, pad_to=p.pad_to, head=head, im2col=im2col)
    return build(True, im2col), build(False, False), width


def matching_run(
    config: MatchConfig,
    out: str,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs DC / DSA / DM as configured, writing OUT/{distilled.npz, metrics.json, support.png,
    curve.png, checkpoint.npz}. Returns the metrics; resuming gives the same result as an
    uninterrupted run (`kip.transfer.judge_run` then trains a protocol's finite networks on it)."""
    config.check()
    ds = data.load(config.dataset, config.data_dir)
    settings = config.settings(ds.name, ds.num_classes)
    settings.check()
    smallest = int(data.class_table(ds.y_train, ds.num_classes)[1].min())
    if settings.real_batch > smallest:  # as DC's get_images: a class's whole training set where it is smaller
        settings = dataclasses.replace(settings, real_batch=smallest)
    model, embed, width = networks(config.width, ds.num_classes)
    model.check_input_shape(ds.image_shape)
    run.prepare_out(out, resume, overwrite)
    problem = run.prepare(ds, config.kernel_options, zca=False, precision=config.precision, max_memory=config.max_memory,
                          devices=config.devices)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    real_idx = run.start_indices(config.seed, ds.y_train, ds.num_classes, config.ipc)  # class-sorted
    x_train = jnp.asarray(problem.x_train, jnp.float32)
    if config.init == "real":
        init_idx, init_images = real_idx, x_train[real_idx]
    else:
        init_idx = np.full(len(real_idx), -1)
        init_images = jax.random.normal(init_key, (len(real_idx),) + ds.image_shape, jnp.float32)
    labels = data.one_hot(np.repeat(np.arange(ds.num_classes), config.ipc), ds.num_classes, dtype=problem.dtype)

    optimizer = matching.image_optimizer(config.image_lr)
    state = matching.init_state(init_images, optimizer, run_key)
    real = distill.train_data(x_train, ds.y_train, ds.num_classes, jnp.float32)
    evaluate = run.make_evaluator(problem, config.reg, config.block_size)
    ckpt_path = os.path.join(out, "checkpoint.npz")
    config_dict = dataclasses.asdict(config)
    history = loop.History()
    if resume:
        state, history = loop.resume(ckpt_path, state, config_dict, out)
        log(f"resuming {out} from step {int(state.step)}")
    name = config.method.upper()
    log(f"kip distill --method {config.method}: {ds.name}, {config.ipc} images/class ({config.init} start), "
        f"{config.iterations} iterations, network {model.__class__.__name__} width {width}, real batch "
        f"{settings.real_batch}/class, loops {settings.outer_loop}/{settings.inner_loop}, image lr {config.image_lr}, "
        f"augmentation {settings.strategy or 'none'}; KRR evaluation with {config.kernel}")
    step_fn = matching.make_step(settings, model, embed, optimizer)
    state, history = loop.optimise(
        state, lambda n: functools.partial(distill.make_multi_step(step_fn, n), train=real), config.iterations, config.eval_every,
        lambda s: evaluate(s.params["images"], labels), lambda s, h: loop.save_checkpoint(ckpt_path, s, config_dict, h),
        history, ckpt_path, progress, log, checkpoint_every=config.checkpoint_every)
    step, final = int(state.step), history.evals[-1]
    settings_record = {**dataclasses.asdict(settings), "width": width, "image_lr": config.image_lr,
                       "iterations": config.iterations, "network": model.__class__.__name__, "im2col": model.im2col}
    metrics = run.run_metrics(history, step, ds, config_dict, method=config.method, settings=settings_record)
    images = np.asarray(state.params["images"])
    title = f"{name} on {ds.name}, {config.ipc}/class, {step} iterations: KRR ({config.kernel}) test acc {100 * final['test_accuracy']:.2f}%"
    run.write_distilled(out, problem, images, np.asarray(labels), np.asarray(init_images), init_idx, metrics, title,
                        kernel=protocols.load(NETWORK_CARD).model, method=np.array(config.method))
    plots.learning_curve(os.path.join(out, "curve.png"), history.losses, history.evals,
                         f"{name} on {ds.name}, {config.ipc} images/class", loss_label=f"{name} matching loss")
    log(f"KRR ({config.kernel}) test accuracy {100 * final['test_accuracy']:.2f}% (initial: "
        f"{100 * metrics['initial_test_accuracy']:.2f}%); {step} iterations in {history.seconds:.1f} s; wrote {out}/")
    return metrics
