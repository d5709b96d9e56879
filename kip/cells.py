"""Cells: the unit of a table, a sweep or an experiment. A cell is one run folder keyed by all of
its run's options: a finished run of the same options is reused, an interrupted one resumes, and
a folder holding a run of other options is never replaced without `overwrite` (a folder's name
rarely spells every option, so this is what keeps a changed option from deleting finished work)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from kip import InputError, io, label_solve, run


def _with_defaults(stored: dict, config) -> dict:
    """A run's stored config dict with the options added to the config class after it was
    written at their defaults (so finished runs stay reusable as kip grows)."""
    return {**dataclasses.asdict(type(config)()), **stored}


NO_EFFECT = ("devices", "checkpoint_every")  # options a finished run's result does not depend on


def same_options(stored: dict, config, ignore: tuple[str, ...] = NO_EFFECT) -> bool:
    """Whether a run's stored config dict asked for what `config` asks for (`_with_defaults`);
    `ignore` lists options that do not change the result."""
    known, wanted = _with_defaults(stored, config), dataclasses.asdict(config)
    return {k: v for k, v in known.items() if k not in ignore} == {k: v for k, v in wanted.items() if k not in ignore}


def finished(out: str, config, log: Callable[[str], None] = print) -> dict | None:
    """The metrics of a finished run in `out` made with `config` (see `same_options`), else None."""
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path):
        metrics = io.read_json(metrics_path)
        if isinstance(metrics.get("config"), dict) and same_options(metrics["config"], config):
            log(f"{out}: already done ({100 * metrics['test_accuracy']:.2f}%)")
            return metrics
    return None


def _differences(stored: dict, config) -> str:
    """'eval_every 3 -> 6, seed 0 -> 1': the options a stored run and `config` disagree on."""
    known, wanted = _with_defaults(stored, config), dataclasses.asdict(config)
    return ", ".join(f"{k} {known.get(k)!r} -> {v!r}" for k, v in wanted.items() if known.get(k) != v)


def cell_conflict(out: str, config) -> str | None:
    """Why running `config` in `out` would replace work of other options: None when `out` holds
    nothing, or a run of the same options (finished: all options count but `NO_EFFECT`;
    interrupted: all but those a resume may change), else one line naming the folder and the
    options that differ. A folder's name rarely spells every option: this is what keeps a
    changed option from silently deleting a finished run."""
    metrics_path, checkpoint = os.path.join(out, "metrics.json"), run.checkpoint_path(out)
    if os.path.exists(metrics_path):
        stored = io.read_json(metrics_path).get("config")
        if not isinstance(stored, dict):
            return f"{out} holds a run without recorded options"
        if same_options(stored, config):
            return None
        return f"{out} holds a finished run of other options ({_differences(stored, config)})"
    if os.path.exists(checkpoint) and _stepped(config):
        try:
            stored = run.load_checkpoint(checkpoint, None)[1].get("config", {})
        except InputError:
            return f"{out} holds an unreadable checkpoint"
        if same_options(stored, config, ignore=run.RESUMABLE_CHANGES):
            return None
        return f"{out} holds an interrupted run of other options ({_differences(stored, config)})"
    return None


def _stepped(config) -> bool:
    """Whether `config` is of a resumable, checkpointed run (KIP, DC, DSA, DM)."""
    from kip import method_run

    return isinstance(config, (run.DistillConfig, method_run.MethodConfig))


def _check_cell(out: str, config, overwrite: bool) -> str | None:
    """`cell_conflict`, raised as an InputError unless `overwrite`; returns it (None: no conflict)."""
    conflict = cell_conflict(out, config)
    if conflict and not overwrite:
        raise InputError(f"{conflict}: pass --overwrite to replace it, or choose another folder")
    return conflict


def distill_cell(config, out: str, progress: bool = False, log: Callable[[str], None] = print,
                 overwrite: bool = False) -> dict:
    """One cell of a table or sweep (a `run.DistillConfig`: KIP, or a `method_run.MethodConfig`:
    DC, DSA, DM): reuses a finished run in `out` with the same options, resumes an interrupted one,
    or starts it. Returns its metrics. A folder holding a run of other options (`cell_conflict`)
    is an InputError unless `overwrite`."""
    from kip import method_run

    conflict = _check_cell(out, config, overwrite)
    metrics = finished(out, config, log)
    if metrics is not None:
        return metrics
    resume = conflict is None and os.path.exists(run.checkpoint_path(out))
    runner = method_run.method_run if isinstance(config, method_run.MethodConfig) else run.distill_run
    return runner(config, out, resume=resume, overwrite=not resume, progress=progress, log=log)


def label_solve_cell(config: label_solve.LabelSolveConfig, out: str, log: Callable[[str], None] = print,
                     overwrite: bool = False) -> dict:
    """`label_solve_run` unless `out` already holds its result with the same options; a result
    of other options is an InputError unless `overwrite` (see `cell_conflict`)."""
    _check_cell(out, config, overwrite)
    metrics = finished(out, config, log)
    return metrics if metrics is not None else label_solve.label_solve_run(config, out, overwrite=True, log=log)


def archive(out: str, dest: str, files: list[str], record: dict | None = None) -> None:
    """Keeps a finished cell's outcome in `dest`, a compact run folder that `finished` and the
    readers of `out` accept in its place: OUT/metrics.json (with its options), the `files` named
    relative to `out` (the sets a table reads), and `record` as cell.json (e.g. the code's
    commit). Run folders are working space that a new machine does not have; a folder kept in the
    repository lets a table's cells be filled across sessions. Every file is written atomically,
    metrics.json last, so a `dest` without it is not a finished cell."""
    if not os.path.exists(os.path.join(out, "metrics.json")):
        raise InputError(f"{out} holds no finished run to archive")
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
        io.copy_atomic(os.path.join(out, name), os.path.join(dest, name))
    if record is not None:
        io.write_json(os.path.join(dest, "cell.json"), record)
    io.copy_atomic(os.path.join(out, "metrics.json"), os.path.join(dest, "metrics.json"))
