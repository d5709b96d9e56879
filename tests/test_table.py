"""The table runner that experiments/ are configuration over (kip.table)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from kip import InputError, label_solve, run, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_is_the_product_in_order_with_the_last_axis_fastest():
    assert table.grid(kernel=["fc1", "fc3"], ipc=(1, 10)) == [
        {"kernel": "fc1", "ipc": 1}, {"kernel": "fc1", "ipc": 10}, {"kernel": "fc3", "ipc": 1}, {"kernel": "fc3", "ipc": 10}]
    assert table.grid(ipc=[]) == []


def test_markdown_has_a_header_a_rule_and_a_line_per_row():
    columns = [table.Column("a", lambda r: str(r["a"])), table.Column("twice a", lambda r: str(2 * r["a"]))]
    assert table.markdown(columns, [{"a": 1}, {"a": 3}]).splitlines() == [
        "| a | twice a |", "|---|---|", "| 1 | 2 |", "| 3 | 6 |"]
    with pytest.raises(InputError):
        table.markdown([], [])


def test_shown_columns_and_groups_keep_every_row_once_in_order():
    rows = [{"m": "b", "seed": 0, "acc": 1}, {"m": "a", "seed": 0, "acc": 2}, {"m": "b", "seed": 1, "acc": 3}]
    assert table.groups(rows, lambda r: (r["m"],)) == [(("b",), [rows[0], rows[2]]), (("a",), [rows[1]])]
    assert table.groups(rows, lambda r: (r["m"],), order=lambda k: k) == [(("a",), [rows[1]]), (("b",), [rows[0], rows[2]])]
    assert table.markdown(table.shown(("method", "m"), ("accuracy", "acc")), rows[:1]).splitlines()[2] == "| b | 1 |"


def _label_solve(ipc: int, **changes) -> label_solve.LabelSolveConfig:
    return dataclasses.replace(label_solve.LabelSolveConfig(dataset="digits", kernel="fc1", ipc=ipc, target_size=100),
                               **changes)


def test_rows_hold_each_cells_metrics_and_a_shared_cell_runs_once(tmp_path):
    """Two points share the Label Solve cell at 1 per class (same folder, same options): it runs
    once and both rows read it; the extras see the row's cells."""
    def cells_of(point):
        return {"own": (f"ls-ipc{point['ipc']}", _label_solve(point["ipc"])), "shared": ("ls-ipc1", _label_solve(1))}

    logs = []
    rows = table.run_rows(table.grid(ipc=[1, 2]), cells_of, str(tmp_path),
                          extras=lambda row: {"gain": row["own"]["test_accuracy"] - row["shared"]["test_accuracy"]},
                          log=logs.append)
    assert [r["ipc"] for r in rows] == [1, 2] and rows[0]["gain"] == 0.0
    assert rows[1]["own"]["config"]["ipc"] == 2 and rows[1]["shared"]["config"]["ipc"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ls-ipc1", "ls-ipc2"]
    assert sum("; wrote " in line for line in logs) == 2, logs  # three cells asked for, two runs
    again = table.run_rows(table.grid(ipc=[1, 2]), cells_of, str(tmp_path), log=logs.append)
    assert [r["own"]["test_accuracy"] for r in again] == [r["own"]["test_accuracy"] for r in rows]
    assert sum("already done" in line for line in logs) == 2


def test_a_table_names_every_conflicting_cell_and_runs_nothing(tmp_path):
    """target_size is in no folder name: asking for another value names the cell whose finished run
    would be replaced and runs no cell at all (not even the new one); with overwrite it runs."""
    table.run_rows([{"ipc": 1}], lambda p: {"ls": ("ls-ipc1", _label_solve(1))}, str(tmp_path))
    stored = (tmp_path / "ls-ipc1" / "distilled.npz").read_bytes()

    def changed(point):
        return {"ls": (f"ls-ipc{point['ipc']}", _label_solve(point["ipc"], target_size=200))}

    with pytest.raises(InputError, match=r"1 of 2 cells would replace other runs, nothing was run: .*ls-ipc1 holds a "
                                         r"finished run of other options \(target_size 100 -> 200\)"):
        table.run_rows(table.grid(ipc=[2, 1]), changed, str(tmp_path))
    assert (tmp_path / "ls-ipc1" / "distilled.npz").read_bytes() == stored and not (tmp_path / "ls-ipc2").exists()
    rows = table.run_rows(table.grid(ipc=[2, 1]), changed, str(tmp_path), overwrite=True)
    assert [r["ls"]["config"]["target_size"] for r in rows] == [200, 200]


def test_a_stepped_cell_runs_through_the_same_mechanism(tmp_path):
    config = run.DistillConfig(dataset="digits", kernel="fc1", ipc=1, steps=2, eval_every=2, target_batch=60)
    [row] = table.run_rows([{}], lambda p: {"kip": ("kip", config)}, str(tmp_path))
    assert row["kip"]["steps"] == 2 and (tmp_path / "kip" / "distilled.npz").exists()
    assert table.without_curves([row])[0]["kip"].keys() == row["kip"].keys() - {"losses"}


def test_an_experiment_refuses_a_changed_option_its_folder_names_omit(tmp_path):
    """kip_fc's folders name the data set, kernel, ZCA and size, not the target batch: a second run
    asking for another target batch exits 2 in one line, before anything runs, and the finished
    run survives; the results file is not written."""
    runs = tmp_path / "runs"
    out = runs / "digits-fc1-ipc1-seed0"
    config = run.DistillConfig(dataset="digits", kernel="fc1", ipc=1, steps=200, target_batch=5000, learn_labels=True,
                               eval_every=100, clock="cpu")
    table.run_rows([{}], lambda p: {"kip": ("digits-fc1-ipc1-seed0", config)}, str(runs))
    stored = (out / "distilled.npz").read_bytes()
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "kip_fc.py"), "--quick", "--ipc", "1", "--target-batch", "300",
           "--runs-dir", str(runs), "--results-dir", str(tmp_path), "--allow-dirty", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "target_batch 5000 -> 300" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
    assert (out / "distilled.npz").read_bytes() == stored and not list(tmp_path.glob("*.md"))
    assert not (runs / "digits-fc1-ipc1-seed0-label-solve").exists() and not (runs / "digits-fc1-ipc1-seed1").exists()


def test_a_computed_cell_is_kept_reused_and_its_conflict_named_before_any_cell_runs(tmp_path):
    """Cells that are not runs (a trained network's accuracy, as data_diet's): computed once and
    kept with their options; another option in the same file is named before anything computes."""
    calls = []

    def cells_of(meta):
        return lambda p: {"value": (f"v{p['i']}.npz", table.Computed({"i": p["i"], **meta},
                                                                     lambda: calls.append(p["i"]) or {"x": np.array(p["i"])}))}

    rows = table.run_rows(table.grid(i=[1, 2]), cells_of({"scale": 1}), str(tmp_path))
    assert [int(r["value"]["x"]) for r in rows] == [1, 2] and calls == [1, 2]
    table.run_rows(table.grid(i=[1, 2]), cells_of({"scale": 1}), str(tmp_path))
    assert calls == [1, 2]  # reused
    with pytest.raises(InputError, match=r"1 of 2 cells would replace other runs, nothing was run: .*v1\.npz holds a result of other options"):
        table.run_rows(table.grid(i=[3, 1]), cells_of({"scale": 2}), str(tmp_path))
    assert calls == [1, 2] and not (tmp_path / "v3.npz").exists()
    table.run_rows(table.grid(i=[1]), cells_of({"scale": 2}), str(tmp_path), overwrite=True)
    assert calls == [1, 2, 1]


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/api/table.md's example, as a reader pastes it (its runs folder is relative: here, tmp)."""
    text = open(os.path.join(ROOT, "docs", "api", "table.md")).read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api/table.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3:-2] == ["|---|---|"] and [ln.split(" | ")[0] for ln in lines[-2:]] == ["| 1", "| 5"]
    assert float(lines[-1].strip("| ").split(" | ")[1]) > 80.0  # Label Solve at 5/class on digits (chance: 10 %)
    assert (tmp_path / "runs" / "my_table" / "ls-ipc5" / "metrics.json").exists()
