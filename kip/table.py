"""One runner for the tables of experiments/: a table is a grid of points, the cells each point
needs (run configs, each in its own folder under the runs folder) and columns that read a row.
An experiment script is configuration over it (big_vision's one config per paper table): it
names its grid, its cells and its columns; this module runs the cells through the one cell
mechanism of `kip.cells` (reused when finished, resumed when interrupted, never replaced
without `overwrite`, every conflict named before anything runs) and renders the rows.

    rows = table.run_rows(table.grid(kernel=["fc1"], ipc=[1, 10]), cells_of, "runs/kip_fc")
    print(table.markdown(COLUMNS, rows))
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Callable, Iterable, Sequence

from kip import InputError, cells

# point -> {name: (folder relative to the runs folder, config)}: the cells a row reads, by name
CellsOf = Callable[[dict], dict[str, tuple[str, Any]]]


Computed = cells.Computed  # a cell that is not a run: its 'folder' in `CellsOf` is its .npz file


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of a results table: its header and the text of a row's cell (row: the point's
    values, each named cell's metrics and the `extras`)."""

    header: str
    text: Callable[[dict], str]


def grid(**axes: Iterable) -> list[dict]:
    """The points of a grid, in order (the last axis varies fastest):
    grid(kernel=["fc1"], ipc=[1, 10]) -> [{"kernel": "fc1", "ipc": 1}, {"kernel": "fc1", "ipc": 10}]."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(list(axes[n]) for n in names))]


def run_rows(points: Sequence[dict], cells_of: CellsOf, runs_dir: str,
             extras: Callable[[dict], dict] | None = None, progress: bool = False, overwrite: bool = False,
             log: Callable[[str], None] = print) -> list[dict]:
    """One row per point: the point's values, each of its cells' metrics under the cell's name
    (`cells.run_cell` in RUNS_DIR/folder: a run's metrics, a `Computed` cell's arrays), the cells'
    folders under 'folders', and then `extras(row)` (values that are not runs: a baseline, an
    evaluation kept in a cell's folder). Every cell's folder is checked first: the folders that
    hold runs of other options are named in one InputError and nothing runs, unless `overwrite`.
    A cell two points share (same folder and options) runs once."""
    wanted = [{name: (os.path.join(runs_dir, folder), config) for name, (folder, config) in cells_of(p).items()}
              for p in points]
    cells.check_cells([c for w in wanted for c in w.values()], overwrite)
    done: dict[str, dict] = {}
    rows = []
    for point, named in zip(points, wanted):
        row = dict(point)
        for name, (out, config) in named.items():
            if out not in done:
                done[out] = cells.run_cell(config, out, progress=progress, log=log, overwrite=overwrite)
            row[name] = done[out]
        if named:
            row["folders"] = {name: out for name, (out, _) in named.items()}  # where extras find a cell's files
        if extras is not None:
            row.update(extras(row))
        rows.append(row)
    return rows


def shown(*named: tuple[str, str]) -> list[Column]:
    """Columns that show a row's value under a key as it is: shown(("method", "name"), ("KRR", "krr"))."""
    return [Column(header, lambda r, key=key: str(r[key])) for header, key in named]


def groups(rows: Iterable[dict], key: Callable[[dict], tuple],
           order: Callable[[tuple], Any] | None = None) -> list[tuple[tuple, list[dict]]]:
    """The rows grouped by `key(row)` (e.g. a cell's seeds), sorted by `order(key)` (default: in
    the order each key first appears), each group's rows in their given order."""
    grouped: dict[tuple, list[dict]] = {}
    for r in rows:
        grouped.setdefault(key(r), []).append(r)
    return list(grouped.items()) if order is None else sorted(grouped.items(), key=lambda kv: order(kv[0]))


def markdown(columns: Sequence[Column], rows: Sequence[dict]) -> str:
    """The rows as a markdown table, one line per row."""
    if not columns:
        raise InputError("a table needs at least one column")
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.text(r) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def without_curves(rows: Sequence[dict], drop: tuple[str, ...] = ("losses",)) -> list[dict]:
    """The rows for a results .json: each cell's metrics without its per-step curves (`drop`)."""
    return [{k: ({m: x for m, x in v.items() if m not in drop} if isinstance(v, dict) else v) for k, v in r.items()}
            for r in rows]
