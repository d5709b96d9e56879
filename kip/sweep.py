"""`kip sweep CONFIG`: a grid of KIP or Label Solve runs described in one TOML or JSON file.

    name = "kip_fc_mnist"            # names the table; cells go to OUT/<name>/ (default runs/sweeps)
    command = "distill"              # or "label-solve"
    [base]                           # options every cell shares (the `kip distill` flags, as
    dataset = "mnist"                #   DistillConfig / LabelSolveConfig fields)
    data_dir = "../shared/datasets"
    steps = 1000
    learn_labels = true
    [grid]                           # the product of these lists, one run per combination
    kernel = ["fc1", "fc3"]
    ipc = [1, 10, 50]
    seed = [0, 1]

Each cell is one run folder (`cells.distill_cell`): a finished cell is reused, an interrupted one
resumes from its checkpoint, so running the same sweep again after an interruption finishes it
with the same results. With several devices, cells run in parallel, one per device. The sweep
ends with one table (mean ± std over `seed`) and one plot (accuracy against images per class).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import queue
import tomllib
from typing import Any, Callable

import jax
import numpy as np

from kip import InputError, cells, label_solve, parallel, plots, report, run, table

COMMANDS = {"distill": run.DistillConfig, "label-solve": label_solve.LabelSolveConfig}
DEFAULT_OUT = os.path.join("runs", "sweeps")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A grid of runs: `base` options shared by all, `grid` {option: [values]} multiplied out."""

    name: str
    command: str
    base: dict[str, Any]
    grid: dict[str, list]
    out: str

    def cells(self) -> list[tuple[dict, Any]]:
        """[(the cell's grid values, its run config)] in grid order (last option fastest)."""
        keys = list(self.grid)
        config_cls = COMMANDS[self.command]
        cells = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            try:
                config = config_cls(**self.base, **point)
            except TypeError as e:  # a value of the wrong kind reaches the dataclass
                raise InputError(f"sweep {self.name}: cell {point}: {e}") from None
            if hasattr(config, "check"):
                config.check()
            cells.append((point, config))
        return cells

    def cell_dir(self, point: dict) -> str:
        """OUT/<name>/<option>=<value>,..."""
        return os.path.join(self.out, self.name, ",".join(f"{k}={v}" for k, v in point.items()) or "single")


def load(path: str, out: str | None = None) -> Sweep:
    """Reads and checks a sweep file (.toml or .json); `out` overrides its `out` (default runs/sweeps)."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f) if path.endswith(".toml") else json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such sweep file") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid {'TOML' if path.endswith('.toml') else 'JSON'} sweep file ({e})") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a sweep file holds a table with name, command, base and grid")
    unknown = set(spec) - {"name", "command", "base", "grid", "out"}
    if unknown:
        raise InputError(f"{path}: unknown entries {sorted(unknown)} (expected name, command, base, grid, out)")
    command = spec.get("command", "distill")
    if command not in COMMANDS:
        raise InputError(f"{path}: command must be one of {sorted(COMMANDS)}, got {command!r}")
    base, grid = spec.get("base", {}), spec.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise InputError(f"{path}: base and grid must be tables of options")
    fields = {f.name for f in dataclasses.fields(COMMANDS[command])}
    for option in [*base, *grid]:
        if option not in fields:
            raise InputError(f"{path}: {option!r} is not an option of kip {command} (options: {', '.join(sorted(fields))})")
    for option, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{path}: grid.{option} must be a non-empty list of values")
    both = set(base) & set(grid)
    if both:
        raise InputError(f"{path}: {sorted(both)} given in both base and grid")
    name = spec.get("name") or os.path.splitext(os.path.basename(path))[0]
    sweep = Sweep(str(name), command, base, grid, out or spec.get("out", DEFAULT_OUT))
    sweep.cells()  # every cell's options checked before anything runs
    return sweep


def run_sweep(sweep: Sweep, devices: int | None = None, progress: bool = True,
              log: Callable[[str], None] = print, overwrite: bool = False) -> list[dict]:
    """Runs every unfinished cell (in parallel over `devices` of `jax.devices()`, default all;
    one cell per device at a time). Returns one record per cell: its grid values, folder,
    test accuracy, initial (real-image) accuracy, seconds and the device it ran on. Before
    anything runs, cells whose folders hold runs of other options are listed in one InputError
    (`cells.cell_conflict`), unless `overwrite`."""
    used = list(parallel.make_mesh(devices).devices.flat)  # checks --devices
    points = sweep.cells()
    cells.check_cells([(sweep.cell_dir(p), config) for p, config in points], overwrite)
    log(f"sweep {sweep.name}: {len(points)} cells of kip {sweep.command} over {len(used)} device(s); "
        f"folders under {os.path.join(sweep.out, sweep.name)}/")

    def one(point: dict, config, device) -> dict:
        out = sweep.cell_dir(point)
        with jax.default_device(device):
            metrics = cells.run_cell(config, out, progress=progress and len(used) == 1, log=log, overwrite=overwrite)
        return {"cell": point, "out": out, "test_accuracy": metrics["test_accuracy"],
                "initial_test_accuracy": metrics.get("initial_test_accuracy"), "seconds": metrics.get("seconds"),
                "device": str(device)}

    if len(used) == 1:
        return [one(point, config, used[0]) for point, config in points]
    # One worker thread per device; each takes the next cell when its device is free.
    free: queue.Queue = queue.Queue()
    for device in used:
        free.put(device)

    def on_free_device(point, config):
        device = free.get()
        try:
            return one(point, config, device)
        finally:
            free.put(device)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(used)) as pool:
        return list(pool.map(lambda cell: on_free_device(*cell), points))


def summarise(sweep: Sweep, records: list[dict]) -> tuple[str, dict[tuple, dict]]:
    """A markdown table with one row per grid point apart from `seed` (mean ± std over seeds),
    and those rows by key."""
    keys = [k for k in sweep.grid if k != "seed"]
    shown, rows = [], {}
    for key, rs in table.groups(records, lambda r: tuple(r["cell"][k] for k in keys)):
        init = np.array([r["initial_test_accuracy"] for r in rs if r["initial_test_accuracy"] is not None])
        mean, std = report.mean_std(np.array([r["test_accuracy"] for r in rs]))
        rows[key] = {"mean": mean, "std": std, "runs": len(rs)}
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        shown.append({"key": key, "runs": len(rs), "accuracy": f"{100 * mean:.2f} ± {100 * std:.2f}",
                      "initial": f"{100 * init.mean():.2f}" if len(init) else "-",
                      "seconds": f"{np.mean(secs):.0f}" if secs else "-"})
    columns = [*(table.Column(k, lambda r, i=i: str(r["key"][i])) for i, k in enumerate(keys)),
               *table.shown(("runs", "runs"), ("test accuracy (%)", "accuracy"), ("initial real images (%)", "initial"),
                            ("s / run", "seconds"))]
    return table.markdown(columns, shown), rows


def write_summary(sweep: Sweep, records: list[dict], code: dict) -> str:
    """OUT/<name>/<name>.{md,json,png}: the table, every record, and accuracy against images per
    class (one line per combination of the other options) when `ipc` is swept; `code`: the
    `kip.report.provenance` taken before the sweep ran. Returns the table."""
    table, rows = summarise(sweep, records)
    folder = os.path.join(sweep.out, sweep.name)
    body = (f"{table}\n\nkip {sweep.command}, shared options: "
            + (", ".join(f"{k}={v}" for k, v in sweep.base.items()) or "defaults")
            + f". Each cell's run folder is under {folder}/.\n")
    report.write_results(sweep.name, f"Sweep {sweep.name}: kip {sweep.command} over "
                         + " x ".join(sweep.grid) if sweep.grid else f"Sweep {sweep.name}", body,
                         {"base": sweep.base, "grid": sweep.grid, "records": records}, code, results_dir=folder)
    keys = [k for k in sweep.grid if k != "seed"]
    if "ipc" in keys:
        others = [k for k in keys if k != "ipc"]
        curves: dict[str, list] = {}
        for key, row in rows.items():
            point = dict(zip(keys, key))
            label = ", ".join(f"{k}={point[k]}" for k in others) or sweep.command
            curves.setdefault(label, []).append((point["ipc"], row["mean"], row["std"]))
        plots.accuracy_curves(os.path.join(folder, f"{sweep.name}.png"), curves, "images per class",
                              f"sweep {sweep.name}", log_x=True)
    return table
