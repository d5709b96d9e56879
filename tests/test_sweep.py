"""`kip sweep`: grid files checked before anything runs, cells equal to the same `kip distill`
runs made by hand, finished cells reused, interrupted ones resumed, and cells spread over
devices (forced host devices, in a subprocess: the flag must precede JAX's start)."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import forced_devices_flags

from kip import InputError, cells, cli, io, run, sweep

SPEC = textwrap.dedent("""
    name = "tiny"
    command = "distill"
    [base]
    dataset = "digits"
    steps = 6
    eval_every = 3
    target_batch = 60
    learn_labels = true
    [grid]
    ipc = [2]
    seed = [0, 1]
""")


def write(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The tiny sweep run on one device: (sweep, records)."""
    tmp = tmp_path_factory.mktemp("sweep")
    grid = sweep.load(write(tmp, SPEC), str(tmp / "runs"))
    return grid, sweep.run_sweep(grid, progress=False)


def test_cells_equal_runs_made_by_hand_and_are_reused(sequential, tmp_path, monkeypatch):
    grid, records = sequential
    assert [p for p, _ in grid.cells()] == [{"ipc": 2, "seed": 0}, {"ipc": 2, "seed": 1}]
    table = sweep.write_summary(grid, records, {"commit": "abc1234", "stamp": "abc1234"})
    by_hand = run.distill_run(run.DistillConfig(dataset="digits", steps=6, eval_every=3, target_batch=60,
                                                learn_labels=True, ipc=2, seed=1), str(tmp_path / "hand"), progress=False)
    assert records[1]["test_accuracy"] == by_hand["test_accuracy"]
    np.testing.assert_array_equal(io.read_npz(os.path.join(records[1]["out"], "distilled.npz"))["images"],
                                  io.read_npz(str(tmp_path / "hand" / "distilled.npz"))["images"])
    # one row per ipc, mean ± std over the two seeds
    acc = [r["test_accuracy"] for r in records]
    assert f"| 2 | 2 | {100 * np.mean(acc):.2f} ± {100 * np.std(acc, ddof=1):.2f} |" in table
    folder = os.path.join(grid.out, "tiny")
    assert os.path.exists(os.path.join(folder, "tiny.md")) and os.path.exists(os.path.join(folder, "tiny.png"))
    assert len(io.read_json(os.path.join(folder, "tiny.json"))["records"]) == 2

    def no_rerun(*a, **k):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(run, "distill_run", no_rerun)
    assert sweep.run_sweep(grid, progress=False) == records


def test_an_interrupted_cell_resumes_to_the_uninterrupted_result(tmp_path):
    grid = sweep.load(write(tmp_path, SPEC.replace("seed = [0, 1]", "seed = [0]")), str(tmp_path / "runs"))
    (point, config), = grid.cells()
    # half the steps, as if stopped at the step-3 checkpoint: the sweep continues that run
    run.distill_run(config.__class__(**{**config.__dict__, "steps": 3}), grid.cell_dir(point), progress=False)
    os.remove(os.path.join(grid.cell_dir(point), "metrics.json"))
    resumed, = sweep.run_sweep(grid, progress=False)
    whole = run.distill_run(config, str(tmp_path / "whole"), progress=False)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    np.testing.assert_array_equal(io.read_npz(os.path.join(grid.cell_dir(point), "distilled.npz"))["images"],
                                  io.read_npz(str(tmp_path / "whole" / "distilled.npz"))["images"])


@pytest.mark.parametrize("text, message", [
    (SPEC.replace('command = "distill"', 'command = "train"'), "command must be one of"),
    (SPEC.replace("ipc = [2]", "ipcs = [2]"), "'ipcs' is not an option of kip distill"),
    (SPEC.replace("ipc = [2]", "ipc = []"), "grid.ipc must be a non-empty list"),
    (SPEC.replace("steps = 6", "steps = 6\nseed = 3"), "given in both base and grid"),
    (SPEC.replace("ipc = [2]", "ipc = [2, 0]"), "--ipc must be at least 1"),
    (SPEC.replace("[grid]", "[grid"), "not a valid TOML sweep file"),
])
def test_bad_sweep_files_exit_2_with_one_line_before_running_anything(tmp_path, capsys, text, message):
    out = tmp_path / "runs"
    assert cli.main(["sweep", write(tmp_path, text), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_file_and_too_many_devices(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path / "none.toml")]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    assert cli.main(["sweep", write(tmp_path, SPEC), "--out", str(tmp_path / "r"), "--devices", "64"]) == 2
    assert "--devices must be between 1 and" in capsys.readouterr().err


def test_cells_run_in_parallel_over_forced_host_devices(sequential, tmp_path):
    grid, records = sequential
    code = textwrap.dedent(f"""
        import json, jax
        jax.config.update("jax_enable_x64", True)
        from kip import run, sweep
        placed, prepare = [], run.prepare

        def recording(*args, **kwargs):  # where each cell's arrays really live
            problem = prepare(*args, **kwargs)
            placed.append(dict(device=str(jax.config.jax_default_device),
                               test=sorted(str(d) for d in problem.x_test.devices()),
                               train=sorted(str(d) for d in problem.x_train.devices())))
            return problem

        run.prepare = recording
        grid = sweep.load({os.path.join(os.path.dirname(grid.out), "tiny.toml")!r}, {str(tmp_path)!r})
        records = sweep.run_sweep(grid, progress=False, log=lambda s: None)
        print(json.dumps(placed))
        print(json.dumps(records))
    """)
    env = {**os.environ, "XLA_FLAGS": forced_devices_flags(2), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    placed, parallel = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert len({r["device"] for r in parallel}) == 2  # both devices took a cell
    # ... and each cell's data lived on its device alone, not spread over both
    assert sorted(p["device"] for p in placed) == ["cpu:0", "cpu:1"], placed
    assert all(p["test"] == [p["device"]] and p["train"] == [p["device"]] for p in placed), placed
    assert [r["test_accuracy"] for r in parallel] == [r["test_accuracy"] for r in records]


def test_runs_written_before_an_option_existed_still_count_as_finished(sequential):
    grid, records = sequential
    (point, config), _ = grid.cells()
    path = os.path.join(grid.cell_dir(point), "metrics.json")
    metrics = io.read_json(path)
    older = {k: v for k, v in metrics["config"].items() if k not in ("rf_models", "loss", "devices")}
    assert cells.same_options(older, config)
    assert cells.same_options({**metrics["config"], "devices": 4}, config)  # devices do not change the result
    assert not cells.same_options({**older, "lr": 0.5}, config)
    assert not cells.same_options({**older, "loss": "platt"}, config)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "experiments",
                                                             "sweeps", "*.toml"))))
def test_committed_sweep_files_are_valid(path):
    grid = sweep.load(path)
    assert grid.cells() and all(len(p) == len(grid.grid) for p, _ in grid.cells())


def test_a_changed_option_the_folder_name_omits_never_deletes_a_finished_run(sequential, tmp_path):
    """eval_every is in no folder name: a sweep asking for another value lists the cells that
    would be replaced and runs nothing; `kip sweep --overwrite` is the way to replace them."""
    grid, records = sequential
    before = {r["out"]: os.path.getmtime(os.path.join(r["out"], "distilled.npz")) for r in records}
    changed = sweep.load(write(tmp_path, SPEC.replace("eval_every = 3", "eval_every = 2")), grid.out)
    with pytest.raises(InputError, match=r"2 of 2 cells would replace other runs, nothing was run") as refused:
        sweep.run_sweep(changed, progress=False)
    assert "eval_every 3 -> 2" in str(refused.value) and "--overwrite" in str(refused.value)
    assert before == {out: os.path.getmtime(os.path.join(out, "distilled.npz")) for out in before}


def test_a_cell_refuses_a_folder_holding_a_run_of_other_options(tmp_path):
    """The same for one cell (experiments call `distill_cell`): refused, the finished run intact;
    with overwrite it is replaced by the run asked for."""
    config = run.DistillConfig(dataset="digits", steps=2, eval_every=2, target_batch=60, ipc=1)
    out = str(tmp_path / "cell")
    first = cells.distill_cell(config, out)
    stored = (tmp_path / "cell" / "distilled.npz").read_bytes()
    other = dataclasses.replace(config, lr=0.01)
    with pytest.raises(InputError, match=r"holds a finished run of other options \(lr 0.04 -> 0.01\)"):
        cells.distill_cell(other, out)
    assert (tmp_path / "cell" / "distilled.npz").read_bytes() == stored
    assert cells.distill_cell(config, out)["test_accuracy"] == first["test_accuracy"]  # the same options: reused
    replaced = cells.distill_cell(other, out, overwrite=True)
    assert replaced["config"]["lr"] == 0.01


def test_an_archived_cell_is_a_finished_cell_of_its_options(tmp_path):
    """`cells.archive` keeps a finished run's metrics and named files elsewhere (a table's cells in
    the repository): `finished` reuses it for the same options only; an unfinished run is refused."""
    config = run.DistillConfig(dataset="digits", steps=2, eval_every=2, target_batch=60, ipc=1)
    out, kept = str(tmp_path / "cell"), str(tmp_path / "kept" / "cell")
    metrics = cells.distill_cell(config, out)
    cells.archive(out, kept, ["distilled.npz"], {"code": "abc"})
    assert (tmp_path / "kept" / "cell" / "distilled.npz").read_bytes() == (tmp_path / "cell" / "distilled.npz").read_bytes()
    assert cells.finished(kept, config)["test_accuracy"] == metrics["test_accuracy"]
    assert cells.finished(kept, dataclasses.replace(config, lr=0.01)) is None
    assert json.load(open(os.path.join(kept, "cell.json"))) == {"code": "abc"}
    with pytest.raises(InputError, match="holds no finished run"):
        cells.archive(str(tmp_path / "nothing"), str(tmp_path / "kept2"), [])


def test_budget_readings_take_the_last_set_within_each_budget(tmp_path):
    """Snapshots kept at the start and after 10, 50 and 130 s: budgets of 5 / 60 / 120 / 200 s read
    the start / 50 / 50 / 130; a closed-form run (Label Solve) reads its one set at every budget its solve fits in, by the
    clock asked; an unfinished run reads nothing."""
    out = str(tmp_path / "run")
    for step, seconds in ((0, 0.0), (10, 10.0), (40, 50.0), (90, 130.0)):
        io.write_npz(run.snapshot_path(out, step), images=np.zeros((1, 2, 2, 1)), seconds=np.float64(seconds))
    budgets = (5.0, 60.0, 120.0, 200.0)
    assert cells.budget_readings(out, budgets) == {b: None for b in budgets}  # no metrics.json: unfinished
    io.write_json(os.path.join(out, "metrics.json"), {"seconds": 70.0, "cpu_seconds": 30.0})
    assert cells.budget_readings(out, budgets) == {5.0: run.snapshot_path(out, 0), 60.0: run.snapshot_path(out, 40),
                                                   120.0: run.snapshot_path(out, 40), 200.0: run.snapshot_path(out, 90)}
    solved = os.path.join(out, "distilled.npz")
    assert cells.budget_readings(out, (60.0, 120.0), closed_form=True) == {60.0: None, 120.0: solved}
    assert cells.budget_readings(out, (60.0, 120.0), closed_form=True, clock="cpu") == {60.0: solved, 120.0: solved}


def test_judgements_are_computed_once_and_forgotten_when_the_evaluation_changes(tmp_path):
    calls = []
    judge = lambda: calls.append(1) or {"accuracy": 0.5}
    assert cells.Judgements(str(tmp_path), {"protocol": "dsa"}).get("a", judge) == {"accuracy": 0.5}
    assert cells.Judgements(str(tmp_path), {"protocol": "dsa"}).get("a", judge) == {"accuracy": 0.5}  # read back
    assert len(calls) == 1
    cells.Judgements(str(tmp_path), {"protocol": "dc"}).get("a", judge)  # other settings: judged again
    assert len(calls) == 2


def test_judgements_record_the_code_that_made_each_one(tmp_path):
    judge = lambda: {"accuracy": 0.5}
    cells.Judgements(str(tmp_path), {"protocol": "dsa"}).get("old", judge)  # no code given: none recorded
    first = cells.Judgements(str(tmp_path), {"protocol": "dsa"}, code={"commit": "abc1234"})
    first.get("old", judge)  # already judged: its (absent) record is not rewritten
    first.get("new", judge)
    later = cells.Judgements(str(tmp_path), {"protocol": "dsa"}, code={"commit": "def5678"})
    later.get("new", judge)
    assert later.made_by == {"new": {"commit": "abc1234"}}
    assert io.read_json(os.path.join(tmp_path, "judged.json"))["made_by"] == {"new": {"commit": "abc1234"}}
