"""Whole runs behind the command line and the experiments: load and preprocess data, build
the kernel, distil (resumably) or solve labels, evaluate, and write the results of a run."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kip
from kip import InputError, data, distill, io, kernels, krr, loop, parallel, plots, preprocess, report
from kip.kernels import rf
from kip.release import StoredSet, load_distilled_for, read_set

OUTPUT_FILES = ("distilled.npz", "metrics.json", "support.png", "curve.png", "checkpoint.npz")
SNAPSHOTS = "snapshots"  # a folder of the sets evaluated during a run (--snapshots)


def checkpoint_path(out: str) -> str:
    """Where a run in `out` keeps its checkpoint (what `--resume` reads)."""
    return os.path.join(out, "checkpoint.npz")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A data set preprocessed for one kernel: what every run starts from."""

    dataset: data.Dataset
    preprocessing: preprocess.Preprocessing
    x_train: jax.Array  # preprocessed, (N, H, W, C), in the run's dtype
    x_test: jax.Array  # with its rows split over the mesh's devices, padded to a multiple of them
    test_weights: jax.Array  # (len(x_test),): 1 for test images, 0 for padding
    kernel_fn: krr.KernelMatrixFn  # (x1, x2 | None) -> (n1, n2): NTK, or a kernels.RandomFeatures NNGP estimate
    dtype: Any
    layer: kernels.Layer | None  # the preset behind an exact kernel_fn (None for random features)
    mesh: jax.sharding.Mesh  # the devices runs are split over


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """Which kernel: a preset name ('convnet3'), or 'rf-' and a preset for its random-feature
    NNGP estimate from `rf_models` networks of width `rf_width` (drawn from `seed`; KIP draws
    fresh ones each step unless `rf_resample` is False). `get`: an exact kernel's 'ntk' or 'nngp'."""

    name: str = "fc1"
    rf_models: int = rf.DEFAULT_MODELS
    rf_width: int = rf.DEFAULT_WIDTH
    rf_resample: bool = True
    seed: int = 0
    get: str = "ntk"  # an exact kernel's NTK or NNGP (random features estimate the NNGP)

    @staticmethod
    def of(kernel: "str | KernelOptions") -> "KernelOptions":
        """A preset name as options (exact kernels and rf- defaults); options as they are."""
        return kernel if isinstance(kernel, KernelOptions) else KernelOptions(kernel)


def dtype_for(precision: str):
    """The array dtype of `precision` ('float32' | 'float64'). The process's x64 mode is the
    caller's: float64 needs it on (an InputError says so, never a silent float32). With x64 on,
    ridge solves run in float64 at either precision; with it off, in float32 (`kip.krr.solve`)."""
    if precision not in ("float32", "float64"):
        raise InputError(f"precision must be float32 or float64, got {precision!r}")
    if precision == "float64" and not jax.config.jax_enable_x64:
        raise InputError("precision float64 needs JAX's 64-bit mode: call jax.config.update('jax_enable_x64', True) "
                         "(or kip.entry.enable_x64()) before making arrays, or use precision 'float32'")
    return jnp.float32 if precision == "float32" else jnp.float64


def check_kernel(kernel: str | KernelOptions) -> None:
    options = KernelOptions.of(kernel)
    name = rf.parse(options.name) or options.name
    if name not in kernels.PRESETS:
        raise InputError(f"unknown kernel {options.name!r}; choose one of {', '.join(sorted(kernels.PRESETS))}, "
                         f"or {rf.PREFIX}NAME for random features")
    if options.get not in ("ntk", "nngp"):
        raise InputError(f"kernel get must be 'ntk' or 'nngp', got {options.get!r}")
    if rf.parse(options.name):
        for flag, value in (("--rf-models", options.rf_models), ("--rf-width", options.rf_width)):
            if value < 1:
                raise InputError(f"{flag} must be at least 1, got {value}")


def make_kernel(options: KernelOptions, ds: data.Dataset, dtype, max_memory: float | None = None
                ) -> tuple[krr.KernelMatrixFn, kernels.Layer | None]:
    """The kernel function `(x1, x2 | None) -> (n1, n2)` and, for an exact kernel, its preset
    (with `max_memory` bytes for the pairs computed at once, where that matters). Random
    features run in float32 (their Gram matrix and the solve in float64)."""
    check_kernel(options)
    arch = rf.parse(options.name)
    if arch:
        key = jax.random.fold_in(jax.random.PRNGKey(options.seed), 0x5F)
        return kernels.random_features(arch, options.rf_models, options.rf_width, key, options.rf_resample), None
    layer = kernels.preset(options.name, num_classes=ds.num_classes)
    if max_memory:
        layer = layer._replace(kernel_fn=layer.kernel_fn.with_max_memory(max_memory, ds.image_shape, dtype))
    return functools.partial(layer.kernel_fn, get=options.get), layer


def prepare(
    ds: data.Dataset,
    kernel: str | KernelOptions,
    zca: bool = False,
    precision: str = "float64",
    preprocessing: preprocess.Preprocessing | None = None,
    max_memory: float | None = None,
    devices: int | None = None,
) -> Problem:
    """Fits (or reuses) the preprocessing on `ds`, builds the kernel (see `make_kernel`) and the
    mesh of `devices` devices (None: all), and puts the test set on it, split by rows."""
    dtype = dtype_for(precision)
    options = KernelOptions.of(kernel)
    kernel_fn, layer = make_kernel(options, ds, dtype, max_memory)
    mesh = parallel.make_mesh(devices)
    prep = preprocessing or preprocess.fit(ds.x_train, "kip-zca" if zca else "standardize")
    x_test = jnp.asarray(prep.apply(ds.x_test), dtype)
    test_weights, x_test = parallel.split_rows(mesh, jnp.ones(len(x_test), dtype), x_test)
    return Problem(ds, prep, jnp.asarray(prep.apply(ds.x_train), dtype), x_test, test_weights, kernel_fn, dtype,
                   layer, mesh)


def make_evaluator(problem: Problem, reg: float, block_size: int,
                   rows: np.ndarray | None = None) -> Callable[[jax.Array, jax.Array], dict]:
    """(support images, support labels) -> {'test_accuracy', 'test_mse'} on the full test set (with
    `rows`: on those training rows instead, a validation split), its rows split over the devices."""
    ds, mesh = problem.dataset, problem.mesh
    y, x_eval, weights = (ds.y_test, problem.x_test, problem.test_weights) if rows is None else (ds.y_train[rows], None, None)
    if rows is not None:
        weights, x_eval = parallel.split_rows(mesh, jnp.ones(len(rows), problem.dtype), problem.x_train[rows])
    _, labels, targets = parallel.split_rows(mesh, jnp.ones(len(y), problem.dtype), jnp.asarray(y),
                                             data.one_hot(y, ds.num_classes, dtype=problem.dtype))

    @jax.jit
    def metrics(kernel_key, images, support_labels, x_test, weights, labels, targets):
        return krr.test_metrics(rf.with_key(problem.kernel_fn, kernel_key), images, support_labels, x_test, labels,
                                targets, reg, block_size, mesh, weights)

    kernel_key = parallel.replicate(mesh, rf.key_of(problem.kernel_fn))  # an argument: seeds share the program

    def evaluate(images, support_labels) -> dict:
        support = parallel.replicate(mesh, (jnp.asarray(images, problem.dtype), jnp.asarray(support_labels)))
        acc, mse = metrics(kernel_key, *support, x_eval, weights, labels, targets)
        return {"test_accuracy": float(acc), "test_mse": float(mse)}

    return evaluate


def environment(code: dict | None = None) -> dict:
    """Where a result was measured (`kip.report.machine`; `code`: the provenance its run started from)."""
    return {"kip": kip.__version__, **report.machine(code)}


def prepare_out(out: str, resume: bool, overwrite: bool) -> None:
    """Makes `out` ready for a run: resuming needs its checkpoint; a run already there needs
    `overwrite`, which removes its files."""
    existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out, f))]
    if resume:
        if not os.path.exists(checkpoint_path(out)):
            raise InputError(f"--resume: no checkpoint in {out} to resume from")
        return
    if existing and not overwrite:
        raise InputError(f"{out} already holds a run ({', '.join(existing)}): pass --resume to continue it or --overwrite to replace it")
    for f in existing:
        os.remove(os.path.join(out, f))
    if overwrite and os.path.isdir(os.path.join(out, SNAPSHOTS)):
        shutil.rmtree(os.path.join(out, SNAPSHOTS))


# --------------------------------------------------------------------------- KIP


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What every distillation run's options share: the data, the set's size, the seed, and the
    kernel of its KRR (KIP's and Label Solve's own kernel; the network methods' evaluation)."""

    dataset: str = data.DEFAULT_DATASET
    data_dir: str | None = None
    kernel: str = "fc1"
    ipc: int = 10
    seed: int = 0
    reg: float = krr.DEFAULT_REG
    precision: str = "float64"
    block_size: int = krr.DEFAULT_BLOCK
    max_memory: float | None = None
    rf_models: int = rf.DEFAULT_MODELS
    rf_width: int = rf.DEFAULT_WIDTH
    devices: int | None = None  # None: all visible devices

    @property
    def kernel_options(self) -> KernelOptions:
        return KernelOptions(self.kernel, self.rf_models, self.rf_width, seed=self.seed)

    def check(self) -> None:
        check_kernel(self.kernel_options)
        for name in ("ipc", "block_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.reg >= 0 and np.isfinite(self.reg)):
            raise InputError(f"--reg must be >= 0, got {self.reg}")


@dataclasses.dataclass(frozen=True)
class SteppedRunOptions(RunOptions):
    """`RunOptions` of a run that optimises its set step by step: when it evaluates, checkpoints
    and stops."""

    eval_every: int = 100
    checkpoint_every: int | None = None  # None: at each evaluation
    snapshots: bool = False  # also keep the set of every checkpoint (see `snapshot_path`)
    max_seconds: float | None = None  # stop once the steps took this long (an equal-compute budget)
    clock: str = "wall"  # how those seconds (and the snapshots' seconds) are counted: loop.CLOCKS
    # training images held out of the real data the run reads (none of the set's sources) and judged
    # by KRR at every evaluation: what a learning rate or a step count is chosen on, never the test set (0: none)
    val_size: int = 0

    def check(self) -> None:
        super().check()
        if self.val_size < 0:
            raise InputError(f"--val-size must be >= 0, got {self.val_size}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise InputError(f"--max-seconds must be positive, got {self.max_seconds}")
        if self.clock not in loop.CLOCKS:
            raise InputError(f"--clock must be one of {', '.join(loop.CLOCKS)}, got {self.clock!r}")


@dataclasses.dataclass(frozen=True)
class DistillConfig(SteppedRunOptions):
    """Options of a KIP run (the command line's `kip distill` flags)."""

    steps: int = 1000
    target_batch: int = 5000
    lr: float = 0.04
    learn_labels: bool = False
    zca: bool = False
    rf_resample: bool = True
    loss: str = "mse"
    init_from: str | None = None  # a distilled .npz to start from instead of real images (fine-tuning)
    get: str = "ntk"  # an exact kernel's NTK or NNGP (random features estimate the NNGP whatever this says)

    @property
    def kernel_options(self) -> KernelOptions:
        return KernelOptions(self.kernel, self.rf_models, self.rf_width, self.rf_resample, self.seed, self.get)

    def check(self) -> None:
        super().check()
        if self.loss not in distill.LOSSES:
            raise InputError(f"--loss must be one of {', '.join(distill.LOSSES)}, got {self.loss!r}")
        if self.target_batch < 1:
            raise InputError(f"--target-batch must be at least 1, got {self.target_batch}")
        if self.steps < 0:
            raise InputError(f"--steps must be >= 0, got {self.steps}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")


def _start_set(config: DistillConfig, ds: data.Dataset) -> StoredSet:
    """The set a fine-tuning run starts from (`config.init_from`), checked against this run; its
    preprocessing is None for the authors' format (`prepare` then fits one on train)."""
    start = read_set(config.init_from, ds.image_shape, ds.num_classes, "nhwc")
    images, prep = start.images, start.preprocessing
    if len(images) != config.ipc * ds.num_classes:
        raise InputError(f"--init-from: {config.init_from} holds {len(images)} images; --ipc {config.ipc} needs "
                         f"{config.ipc * ds.num_classes} ({ds.num_classes} classes)")
    if prep is not None and (prep.zca is not None) != config.zca:
        raise InputError(f"--init-from: {config.init_from} lives in a {'ZCA-whitened' if prep.zca is not None else 'standardised'}"
                         f" space; run with{'' if prep.zca is not None else 'out'} --zca")
    return start


def start_indices(seed: int, labels: np.ndarray, num_classes: int, ipc: int) -> np.ndarray:
    """The class-balanced real training images, (ipc * num_classes,) indices, that a run with this
    `seed` starts from (KIP and Label Solve alike): fixed by the seed and size alone, so an
    evaluation can keep them out of its validation split before those runs exist."""
    init_key = jax.random.split(jax.random.PRNGKey(seed))[0]
    return data.balanced_subset(init_key, labels, num_classes, ipc)


def distill_run(
    config: DistillConfig,
    out: str,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs KIP as configured, writing OUT/{distilled.npz, metrics.json, support.png,
    curve.png, checkpoint.npz}. Returns the metrics. Resuming from OUT gives the same
    result as an uninterrupted run; a NaN loss raises `TrainingDiverged` and leaves the
    last good checkpoint in place.
    """
    config.check()
    code = report.provenance(allow_dirty=True)  # at the start: the tree may change while it runs
    ds = data.load(config.dataset, config.data_dir)
    n = len(ds.y_train)
    start_set = _start_set(config, ds) if config.init_from else None
    key = jax.random.PRNGKey(config.seed)
    init_idx = start_set.sources if start_set else start_indices(config.seed, ds.y_train, ds.num_classes, config.ipc)
    val_idx = data.run_validation_rows(config.seed, n, config.val_size, init_idx)
    if start_set and val_idx is not None and not np.array_equal(start_set.val_indices, val_idx):  # else choices would see its targets
        raise InputError(f"--init-from: {config.init_from} was not distilled with this run's {config.val_size} training images "
                         "held out (its run's --val-size and --seed must be this run's): they would validate a set fitted to them")
    prepare_out(out, resume, overwrite)
    problem = prepare(ds, config.kernel_options, config.zca, config.precision, max_memory=config.max_memory,
                      devices=config.devices, preprocessing=start_set.preprocessing if start_set else None)
    run_key = jax.random.split(key)[1]
    if start_set:
        init_images, init_labels = (jnp.asarray(a, problem.dtype) for a in (start_set.images, start_set.labels))
    else:
        init_images = problem.x_train[init_idx]
        init_labels = data.one_hot(ds.y_train[init_idx], ds.num_classes, dtype=problem.dtype)
    pool = None if val_idx is None else np.setdiff1d(np.arange(n), val_idx)  # the targets' rows
    x_pool, y_pool = (problem.x_train, ds.y_train) if pool is None else (problem.x_train[pool], ds.y_train[pool])
    target_batch = min(config.target_batch, len(y_pool))
    if target_batch < len(y_pool):
        data.check_per_class(-(-target_batch // ds.num_classes), data.class_table(y_pool, ds.num_classes)[1], "--target-batch")

    optimizer = optax.adam(config.lr)
    state = distill.init_state(init_images, init_labels, optimizer, run_key, config.loss)
    train = distill.train_data(x_pool, y_pool, ds.num_classes, problem.dtype,
                               problem.layer.kernel_fn if problem.layer else None)
    config_dict = dataclasses.asdict(config)
    state, history = resumed(out, state, config_dict, resume, log)
    lr = jnp.asarray(config.lr, problem.dtype)
    state, train, lr = parallel.replicate(problem.mesh, (state, train, lr))

    log(f"kip distill: {ds.name} ({len(ds.y_train)} train / {len(ds.y_test)} test, {ds.num_classes} classes), "
        f"kernel {config.kernel}, {config.ipc} images/class, target batch {target_batch}, "
        f"{config.precision}, {environment()['device']}")
    log(f"kip distill: {parallel.describe(problem.mesh)}; the target batch is split between them")
    step_fn = distill.make_adam_step(problem.kernel_fn, target_batch, config.reg, config.learn_labels, config.loss,
                                     problem.mesh)
    state, history = optimise_set(out, problem, config, state, history, step_fn, (train, lr), config.steps,
                                  lambda s: (s.params["images"], s.params["labels"]), init_idx, config.kernel,
                                  progress, log, hint="try a smaller --lr or a larger --reg",
                                  validation=val_idx)
    metrics = run_metrics(history, int(state.step), ds, config_dict, code)
    step, evals, seconds, final = metrics["steps"], history.evals, history.seconds, history.evals[-1]
    write_distilled(out, problem, np.asarray(state.params["images"]), np.asarray(state.params["labels"]),
                     np.asarray(init_images), init_idx, metrics,
                     f"KIP {config.kernel} on {ds.name}, {config.ipc}/class, {step} steps: "
                     f"test acc {100 * final['test_accuracy']:.2f}%",
                     **({} if val_idx is None else {"val_indices": val_idx}))  # what later choices must exclude too
    plots.learning_curve(os.path.join(out, "curve.png"), history.losses, evals, f"KIP {config.kernel} on {ds.name}, {config.ipc} images/class")
    log(f"test accuracy {100 * metrics['test_accuracy']:.2f}% (initial real images: "
        f"{100 * metrics['initial_test_accuracy']:.2f}%), test mse {metrics['test_mse']:.5f}; "
        f"{step} steps in {seconds:.1f} s; wrote {out}/")
    return metrics


def resumed(out: str, state: Any, config: dict, resume: bool, log: Callable[[str], None]) -> tuple[Any, loop.History]:
    """The start of a run in `out` (any method): `state` and an empty history, or with `resume`
    the checkpointed state and history (checked to come from the same `config`)."""
    if not resume:
        return state, loop.History()
    state, history = loop.resume(checkpoint_path(out), state, config, out)
    log(f"resuming {out} from step {int(state.step)}")
    return state, history


def optimise_set(out: str, problem: Problem, config: Any, state: Any, history: loop.History, step_fn: Callable,
                 step_data: Any, steps: int, set_of: Callable, init_idx, kernel: str, progress: bool,
                 log: Callable[[str], None], hint: str = "try a smaller --lr", validation: np.ndarray | None = None,
                 extras_of: Callable[[Any], dict] | None = None) -> tuple[Any, loop.History]:
    """`loop.optimise` of a distillation run (any method): `steps` of `step_fn(state, step_data)`
    fused by `loop.fused_steps`, the set `set_of(state)` -> (images, labels) judged by
    KRR every `config.eval_every` steps (on the test set, and on the training rows `validation` as
    'val_accuracy' / 'val_mse'), checkpoints in OUT every `config.checkpoint_every` (with
    `config.snapshots`, the set at each as well, with what the method learns beside it:
    `extras_of(state)`, e.g. MTT's lr), stopped after `config.max_seconds` of `config.clock`."""
    ckpt_path = checkpoint_path(out)
    config_dict = dataclasses.asdict(config)
    evaluate = make_evaluator(problem, config.reg, config.block_size)
    if validation is not None:
        on_test, on_val = evaluate, make_evaluator(problem, config.reg, config.block_size, validation)

        def evaluate(images, labels) -> dict:
            val = on_val(images, labels)
            return {**on_test(images, labels), "val_accuracy": val["test_accuracy"], "val_mse": val["test_mse"]}
    checkpoint = lambda s, h: loop.save_checkpoint(ckpt_path, s, config_dict, h)
    if config.snapshots:
        checkpoint = keeping_snapshots(checkpoint, out, problem, init_idx, kernel, set_of, extras_of)
    fused = loop.fused_steps(step_fn)  # one compiled program for every chunk length
    return loop.optimise(state, lambda n: lambda s: fused(s, step_data, num_steps=n), steps,
                         config.eval_every, lambda s: evaluate(*set_of(s)), checkpoint, history, ckpt_path, progress,
                         log, hint=hint, checkpoint_every=config.checkpoint_every, max_seconds=config.max_seconds,
                         clock=config.clock)


def run_metrics(history: loop.History, step: int, ds: data.Dataset, config: dict, code: dict | None = None, **extra) -> dict:
    """The metrics.json of a distillation run (any method) that ended at `step`: the final and initial test
    accuracy, timing, the options, the machine and code (`environment`), the evaluations and the losses."""
    final = history.evals[-1]
    if "val_accuracy" in final:  # the evaluation a choice rests on: the final one and the best, with its step
        best = max(history.evals, key=lambda e: e["val_accuracy"])
        extra = {"val_accuracy": final["val_accuracy"], "best_val": {k: best[k] for k in ("step", "val_accuracy", "test_accuracy")},
                 **extra}
    return {
        **extra,
        "test_accuracy": final["test_accuracy"],
        "test_mse": final["test_mse"],
        "initial_test_accuracy": history.evals[0]["test_accuracy"],
        "steps": step,
        "seconds": history.seconds,
        "seconds_per_step": history.seconds / step if step else None,
        "test_size": int(len(ds.y_test)),
        "config": config,
        "environment": environment(code),
        "evals": history.evals,
        "losses": history.losses,
    }


def write_set(path: str, problem: Problem, images, labels, init_idx, kernel: str, **extra) -> None:
    """A distilled set as one .npz (atomic): images, labels, the training indices they started
    from, the kernel or network they were distilled with, the preprocessing, `extra` arrays."""
    io.write_npz(path, images=images, labels=labels, initial_indices=init_idx, kernel=np.array(kernel),
                 **problem.preprocessing.to_arrays(), **extra)


def snapshot_path(out: str, step: int) -> str:
    """Where a run with `snapshots` keeps the set it evaluated at `step` (the format of distilled.npz)."""
    return os.path.join(out, SNAPSHOTS, f"step-{step:07d}.npz")


def keeping_snapshots(checkpoint: Callable, out: str, problem: Problem, init_idx, kernel: str,
                      set_of: Callable, extras_of: Callable[[Any], dict] | None = None) -> Callable:
    """A `loop.optimise` checkpoint callback `(state, history)` that first writes the state's set
    (`set_of(state)` -> (images, labels)), the seconds the steps took so far (`seconds`) and the
    arrays `extras_of(state)` to `snapshot_path(out, state.step)`: equal-compute tables read them."""

    def keep_and_checkpoint(state, history):
        images, labels = set_of(state)
        write_set(snapshot_path(out, int(state.step)), problem, np.asarray(images), np.asarray(labels), init_idx, kernel,
                  seconds=np.asarray(history.seconds), **(extras_of(state) if extras_of else {}))
        checkpoint(state, history)

    return keep_and_checkpoint


def write_distilled(out: str, problem: Problem, images, labels, init_images, init_idx, metrics: dict, title: str,
                    kernel: str | None = None, **extra) -> None:
    """A run's outputs: OUT/distilled.npz (`write_set`), metrics.json and support.png."""
    write_set(os.path.join(out, "distilled.npz"), problem, images, labels, init_idx,
              metrics["config"]["kernel"] if kernel is None else kernel, **extra)
    io.write_json(os.path.join(out, "metrics.json"), metrics)
    plots.support_grid(os.path.join(out, "support.png"), images, labels, init_images, title)


# --------------------------------------------------------------------------- evaluate


def evaluate_run(
    distilled: str,
    dataset: str = data.DEFAULT_DATASET,
    data_dir: str | None = None,
    kernel: str | KernelOptions = "fc1",
    recipe: str | None = None,
    precision: str = "float64",
    reg: float = krr.DEFAULT_REG,
    block_size: int = krr.DEFAULT_BLOCK,
    log: Callable[[str], None] = print,
    max_memory: float | None = None,
    devices: int | None = None,
    zca_strength: float = preprocess.ZCA_STRENGTH,
    layout: str = "auto",
    hard_labels: bool = False,
) -> dict:
    """KRR test accuracy of a distilled set under a kernel (a name, or `KernelOptions` for
    random features), the test set split over `devices` devices (None: all). The file's own
    preprocessing is re-applied to the test set; for a file without one, the stated `recipe`.
    `hard_labels`: centred one-hot rows of the argmax of the set's labels in place of its own."""
    options = KernelOptions.of(kernel)
    check_kernel(options)
    loaded = load_distilled_for(distilled, dataset, data_dir, recipe, zca_strength, layout)
    ds, images, labels = loaded.dataset, loaded.images, loaded.labels
    if hard_labels:
        labels = np.asarray(data.hard_labels(labels, ds.num_classes))
    problem = prepare(ds, options, precision=precision, preprocessing=loaded.preprocessing, max_memory=max_memory,
                      devices=devices)
    log(f"kip evaluate: {parallel.describe(problem.mesh)}; the test set is split between them")
    result = make_evaluator(problem, reg, block_size)(images, labels)
    kernel = options.name
    if rf.parse(kernel):
        result.update(rf_models=options.rf_models, rf_width=options.rf_width, rf_seed=options.seed)
    result.update(support_size=int(len(images)), labels="hard" if hard_labels else "set", kernel=kernel, dataset=ds.name,
                  test_size=int(len(ds.y_test)), preprocessing=loaded.note, devices=problem.mesh.size)
    log(f"{distilled}: {len(images)} images{' (hard labels)' * hard_labels}, kernel {kernel}, {ds.name} test accuracy "
        f"{100 * result['test_accuracy']:.2f}%, test mse {result['test_mse']:.5f}")
    return result
