"""Label Solve (Nguyen et al., ICLR 2021): the support set's labels solved in closed form by
kernel regression onto a real target set, on a class-balanced real support set; the same outputs
as every distillation run."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from kip import InputError, data, distill, loop, parallel, report
from kip.run import (RunOptions, environment, make_evaluator, prepare, prepare_out, start_indices,
                     write_distilled)


@dataclasses.dataclass(frozen=True)
class LabelSolveConfig(RunOptions):
    """Options of `kip label-solve`."""

    target_size: int | None = None  # None: the whole training set
    zca: bool = False

    def check(self) -> None:
        super().check()
        if self.target_size is not None and self.target_size < 1:
            raise InputError(f"--target-size must be at least 1, got {self.target_size}")


def label_solve_run(config: LabelSolveConfig, out: str, overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Label Solve on a class-balanced real support set; writes the same files as KIP."""
    config.check()
    code = report.provenance(allow_dirty=True)  # at the start: the tree may change while it runs
    options = config.kernel_options
    prepare_out(out, resume=False, overwrite=overwrite)
    elapsed = loop.stopwatch()
    problem = prepare(data.load(config.dataset, config.data_dir), options, config.zca, config.precision,
                      max_memory=config.max_memory, devices=config.devices)
    ds = problem.dataset
    target_key = jax.random.split(jax.random.PRNGKey(config.seed))[1]
    idx = start_indices(config.seed, ds.y_train, ds.num_classes, config.ipc)
    n_train = len(ds.y_train)
    if config.target_size is None or config.target_size >= n_train:
        target_idx = np.arange(n_train)
    else:
        if config.target_size < len(idx):
            raise InputError(f"--target-size {config.target_size} is smaller than the support set ({len(idx)})")
        target_idx = np.asarray(jax.random.permutation(target_key, n_train)[: config.target_size])
    x_s = problem.x_train[idx]
    y_init = data.one_hot(ds.y_train[idx], ds.num_classes, dtype=problem.dtype)
    y_t = data.one_hot(ds.y_train[target_idx], ds.num_classes, dtype=problem.dtype)
    log(f"label solve: {parallel.describe(problem.mesh)}; the targets are split between them")
    solve = jax.jit(functools.partial(distill.label_solve, problem.kernel_fn, reg=config.reg, block_size=config.block_size,
                                      mesh=problem.mesh))
    y_s = solve(*parallel.replicate(problem.mesh, (x_s, problem.x_train[target_idx], y_t)))
    evaluate = make_evaluator(problem, config.reg, config.block_size)
    before, after = evaluate(x_s, y_init), evaluate(x_s, y_s)
    spent = elapsed()
    metrics = {
        "test_accuracy": after["test_accuracy"],
        "test_mse": after["test_mse"],
        "initial_test_accuracy": before["test_accuracy"],
        "target_size": int(len(target_idx)),
        "seconds": spent["wall"],
        "cpu_seconds": spent["cpu"],  # this process's CPU time: see loop.CLOCKS
        "test_size": int(len(ds.y_test)),
        "config": dataclasses.asdict(config),
        "environment": environment(code),
    }
    write_distilled(out, problem, np.asarray(x_s), np.asarray(y_s), np.asarray(x_s), idx, metrics,
                     f"Label Solve {config.kernel} on {ds.name}, {config.ipc}/class: test acc {100 * after['test_accuracy']:.2f}%")
    log(f"label solve: {ds.name}, kernel {config.kernel}, {len(idx)} support images, {len(target_idx)} targets: "
        f"test accuracy {100 * before['test_accuracy']:.2f}% -> {100 * after['test_accuracy']:.2f}% in {spent['wall']:.1f} s; wrote {out}/")
    return metrics
