"""Cells: the unit of a table, a sweep or an experiment. A cell is one run folder keyed by all of
its run's options: a finished run of the same options is reused, an interrupted one resumes, and
a folder holding a run of other options is never replaced without `overwrite` (a folder's name
rarely spells every option, so this is what keeps a changed option from deleting finished work)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from kip import InputError, io, label_solve, loop, run


def _with_defaults(stored: dict, config) -> dict:
    """A run's stored config dict with the options added to the config class after it was
    written at their defaults (so finished runs stay reusable as kip grows)."""
    return {**dataclasses.asdict(type(config)()), **stored}


NO_EFFECT = ("devices", "checkpoint_every")  # options a finished run's result does not depend on


@dataclasses.dataclass(frozen=True)
class Computed:
    """A cell that is not a run: `compute()` (a dict of arrays, e.g. a trained network's accuracy)
    kept in one .npz file with `meta`, every option it depends on (`kip.io.cached`)."""

    meta: dict
    compute: Callable[[], dict]


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
    if isinstance(config, Computed):
        return f"{out} holds a result of other options" if io.cached_conflict(out, config.meta) else None
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
            stored = loop.load_checkpoint(checkpoint, None)[1].get("config", {})
        except InputError:
            return f"{out} holds an unreadable checkpoint"
        if same_options(stored, config, ignore=loop.RESUMABLE_CHANGES):
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


def run_cell(config, out: str, progress: bool = False, log: Callable[[str], None] = print,
             overwrite: bool = False) -> dict:
    """Any cell by its config's kind: a `Computed` one (`io.cached`: its arrays), Label Solve
    (`label_solve_cell`) or a stepped run (KIP, DC, DSA, DM, DD, MTT, FRePo: `distill_cell`).
    Returns its metrics."""
    if isinstance(config, Computed):
        return io.cached(out, config.meta, config.compute, overwrite)
    if isinstance(config, label_solve.LabelSolveConfig):
        return label_solve_cell(config, out, log=log, overwrite=overwrite)
    return distill_cell(config, out, progress=progress, log=log, overwrite=overwrite)


def check_cells(pairs: list[tuple[str, Any]], overwrite: bool = False) -> list[str]:
    """`cell_conflict` of every (folder, config) of a table or sweep, before any of them runs:
    one InputError naming each conflicting folder and its differing options, unless
    `overwrite` (then the conflicts are returned, and those runs will be replaced)."""
    conflicts = [c for c in (cell_conflict(out, config) for out, config in pairs) if c]
    if conflicts and not overwrite:
        raise InputError(f"{len(conflicts)} of {len(pairs)} cells would replace other runs, nothing was run: "
                         + "; ".join(conflicts) + ". Pass --overwrite to replace them")
    return conflicts


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


def budget_readings(out: str, budgets: tuple[float, ...], closed_form: bool = False,
                    clock: str = "wall") -> dict[float, str | None]:
    """budget (s) -> the last set kept within it in the run folder `out` (its snapshots, by the
    seconds they record; None: the run has not reached it or is unfinished). `closed_form` (Label
    Solve): the one set, distilled.npz, at every budget its solve fits in by `clock`."""
    metrics_path = os.path.join(out, "metrics.json")
    if not os.path.exists(metrics_path):
        return {b: None for b in budgets}
    if closed_form:
        seconds = io.read_json(metrics_path)["cpu_seconds" if clock == "cpu" else "seconds"]
        return {b: os.path.join(out, "distilled.npz") if seconds <= b else None for b in budgets}
    folder = os.path.join(out, run.SNAPSHOTS)
    kept = [(float(io.read_npz(os.path.join(folder, f))["seconds"]), os.path.join(folder, f))
            for f in (sorted(os.listdir(folder)) if os.path.isdir(folder) else [])]
    return {b: max((k for k in kept if k[0] <= b), default=(None, None))[1] for b in budgets}


def budget_cell(config, out: str, kept_dir: str, budgets: tuple[float, ...], clock: str, record: dict,
                progress: bool = False, overwrite: bool = False) -> None:
    """An equal-compute cell: runs (or resumes) `config` in the run folder `out` (a stepped
    method with snapshots, or Label Solve), then keeps in `kept_dir` (`archive`) the sets its
    `budget_readings` take and its start, with `record` (e.g. the commit, the clock, the machine)."""
    closed_form = isinstance(config, label_solve.LabelSolveConfig)
    run_cell(config, out, progress=progress, overwrite=overwrite)
    files = {os.path.relpath(p, out) for p in budget_readings(out, budgets, closed_form, clock).values() if p is not None}
    if os.path.exists(run.snapshot_path(out, 0)):
        files.add(os.path.relpath(run.snapshot_path(out, 0), out))
    archive(out, kept_dir, sorted(files), record)


class Judgements:
    """A kept cell's judgements (judged.json beside its sets), valid while `evaluation` (the
    settings that judge them, JSON-able) is unchanged: a set judged once (minutes of finite
    networks) is not judged again, in this session or a later one. `code` (e.g. the
    `kip.report.provenance` of the judging process) is stored beside each new judgement under
    the same key, in `made_by`."""

    def __init__(self, kept_dir: str, evaluation: dict, code: dict | None = None):
        self.path = os.path.join(kept_dir, "judged.json")
        self.evaluation = json.loads(json.dumps(evaluation))
        self.code = code
        stored = io.read_json(self.path) if os.path.exists(self.path) else {}
        same = stored.get("evaluation") == self.evaluation
        self.values = stored.get("values", {}) if same else {}
        self.made_by = stored.get("made_by", {}) if same else {}  # judgements stored before 'made_by' existed: absent

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        """The judgement stored under `key`, or `compute()`'s, stored at once (atomically)."""
        if key not in self.values:
            self.values[key] = compute()
            if self.code is not None:
                self.made_by[key] = self.code
            io.write_json(self.path, {"evaluation": self.evaluation, "values": self.values, "made_by": self.made_by})
        return self.values[key]
