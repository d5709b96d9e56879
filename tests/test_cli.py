"""The command line end to end on the embedded digits: outputs, resume, NaN stop, bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kip import cli, distill, loop

FAST = ["--steps", "20", "--eval-every", "5", "--ipc", "2", "--no-progress"]


def run_cli(*args):
    return cli.main([str(a) for a in args])


def test_distill_writes_all_outputs_and_learns(tmp_path):
    out = tmp_path / "run"
    assert run_cli("distill", "--out", out, "--learn-labels", *FAST) == 0
    for name in ("distilled.npz", "metrics.json", "support.png", "curve.png", "checkpoint.npz"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["config"]["learn_labels"] is True
    assert [e["step"] for e in metrics["evals"]] == [0, 5, 10, 15, 20]
    assert len(metrics["losses"]) == 20
    assert metrics["test_accuracy"] > metrics["initial_test_accuracy"]
    with np.load(out / "distilled.npz") as f:
        assert f["images"].shape == (20, 8, 8, 1) and f["labels"].shape == (20, 10)
        assert {"preprocess_mean", "preprocess_std", "initial_indices"} <= set(f.files)
    # evaluate reads our file back and agrees with the run's own final number
    result = tmp_path / "eval.json"
    assert run_cli("evaluate", "--distilled", out / "distilled.npz", "--out", result) == 0
    evaluated = json.loads(result.read_text())
    np.testing.assert_allclose(evaluated["test_accuracy"], metrics["test_accuracy"])
    from kip import report
    assert evaluated["code"] == report.provenance(allow_dirty=True)  # which code judged it (the tree is unchanged since)
    assert evaluated["environment"]["kip"] and "machine" not in evaluated["code"]


def test_a_run_and_an_evaluation_name_the_code_they_started_from(tmp_path, commits_during_runs):
    """The tree may change while a run goes on (a commit, an edit): metrics.json (KIP, Label Solve)
    and `kip evaluate --out` stamp the code their process started from, not the tree's state when
    they write."""
    commits = commits_during_runs
    for command, out, flags in (("distill", "run", FAST), ("label-solve", "solved", ["--ipc", "2"])):
        started = f"c{commits[0]}"
        assert run_cli(command, "--out", tmp_path / out, *flags) == 0
        assert json.loads((tmp_path / out / "metrics.json").read_text())["environment"]["commit"] == started, command
    started = f"c{commits[0]}"
    assert run_cli("evaluate", "--distilled", tmp_path / "run" / "distilled.npz", "--out", tmp_path / "eval.json") == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["environment"]["commit"] == evaluated["code"]["stamp"] == started != f"c{commits[0]}"


def test_steps_zero_is_the_real_image_baseline(tmp_path):
    assert run_cli("distill", "--out", tmp_path, "--steps", "0", "--ipc", "3", "--no-progress") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["test_accuracy"] == metrics["initial_test_accuracy"]


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, monkeypatch):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_cli("distill", "--out", whole, "--learn-labels", *FAST) == 0

    real = loop.fused_steps
    calls = {"n": 0}

    def interrupting(step):
        runner = real(step)

        def run(state, *args, num_steps):
            calls["n"] += 1
            if calls["n"] == 3:  # Ctrl-C during the third chunk
                raise KeyboardInterrupt
            return runner(state, *args, num_steps=num_steps)

        return run

    monkeypatch.setattr(loop, "fused_steps", interrupting)
    assert run_cli("distill", "--out", broken, "--learn-labels", *FAST) == 130
    assert not (broken / "distilled.npz").exists()
    monkeypatch.setattr(loop, "fused_steps", real)
    assert run_cli("distill", "--out", broken, "--learn-labels", "--resume", *FAST) == 0
    with np.load(whole / "distilled.npz") as a, np.load(broken / "distilled.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, broken))
    timeless = lambda evals: [{k: v for k, v in e.items() if k != "seconds"} for e in evals]  # wall time differs
    assert timeless(ma["evals"]) == timeless(mb["evals"]) and ma["losses"] == mb["losses"]


def test_nan_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path, capsys):
    code = run_cli("distill", "--out", tmp_path, "--lr", "1e200", *FAST)
    assert code == 1
    err = capsys.readouterr().err
    assert "NaN/inf at step" in err and "last good checkpoint (step 0)" in err
    assert not (tmp_path / "distilled.npz").exists()
    assert (tmp_path / "checkpoint.npz").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["distill", "--dataset", "nosuchset", "--data-dir", "{tmp}"], "no file"),
        (["distill", "--kernel", "resnet9000"], "unknown kernel"),
        (["distill", "--ipc", "500"], "class 0 has only"),
        (["distill", "--ipc", "0"], "at least 1"),
        (["distill", "--lr", "-1"], "--lr"),
        (["distill", "--dataset", "broken", "--data-dir", "{tmp}"], "not a readable .npz"),
        (["distill", "--dataset", "nan", "--data-dir", "{tmp}"], "NaN or inf"),
        (["distill", "--resume"], "no checkpoint"),
        (["evaluate", "--distilled", "{tmp}/missing.npz"], "no such file"),
        (["evaluate", "--distilled", "{tmp}/wrongshape.npz"], "images are"),
        (["evaluate", "--distilled", "{tmp}/wronglabels.npz"], "labels"),
        (["evaluate", "--distilled", "{tmp}/tenimages.npz", "--method", "train", "--hard-labels"], "--hard-labels"),
        (["label-solve", "--ipc", "1000"], "class 0 has only"),
        (["label-solve", "--target-size", "0"], "--target-size must be at least 1"),
        (["label-solve", "--reg", "-1"], "--reg must be >= 0"),
        (["distill", "--init-from", "{tmp}/missing.npz"], "no such file"),
        (["distill", "--init-from", "{tmp}/wrongshape.npz", "--ipc", "1"], "images are"),
        (["distill", "--init-from", "{tmp}/tenimages.npz", "--ipc", "2"], "--ipc 2 needs 20"),
        (["distill", "--init-from", "{tmp}/tenimages.npz", "--ipc", "1", "--zca"], "run without --zca"),
        # a set distilled on every training image cannot be validated on some of them
        (["distill", "--init-from", "{tmp}/tenimages.npz", "--ipc", "1", "--val-size", "50"], "was not distilled with this run's 50"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    (tmp_path / "broken.npz").write_bytes(b"not an archive")
    np.savez(tmp_path / "nan.npz", x_train=np.full((20, 4, 4), np.nan), y_train=np.arange(20) % 2,
             x_test=np.zeros((4, 4, 4)), y_test=np.arange(4) % 2)
    np.savez(tmp_path / "wrongshape.npz", images=np.zeros((10, 9, 9, 1)), labels=np.arange(10))
    np.savez(tmp_path / "wronglabels.npz", images=np.zeros((10, 8, 8, 1)), labels=np.zeros((10, 3)))
    np.savez(tmp_path / "tenimages.npz", images=np.zeros((10, 8, 8, 1)), labels=np.arange(10),
             preprocess_mean=np.zeros(1), preprocess_std=np.ones(1))
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] != "evaluate":
        args += ["--out", str(out)]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kip: error:") and message in err[0], err
    assert not out.exists() or os.listdir(out) == []


def test_init_from_starts_at_the_given_set_and_fine_tunes_it(tmp_path):
    first = tmp_path / "first"
    assert run_cli("distill", "--out", first, "--learn-labels", *FAST) == 0
    start = first / "distilled.npz"
    # Under another kernel: the fine-tune's step 0 is that set as `kip evaluate` scores it.
    result = tmp_path / "eval.json"
    assert run_cli("evaluate", "--distilled", start, "--kernel", "fc3", "--out", result) == 0
    tuned = tmp_path / "tuned"
    assert run_cli("distill", "--out", tuned, "--kernel", "fc3", "--init-from", start, "--learn-labels", "--lr", "0.01",
                   *FAST) == 0
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["initial_test_accuracy"] == json.loads(result.read_text())["test_accuracy"]
    assert metrics["config"]["init_from"] == str(start)
    with np.load(start) as a, np.load(tuned / "distilled.npz") as b:
        np.testing.assert_array_equal(a["initial_indices"], b["initial_indices"])
        # Adam moves a pixel by at most lr (1 - b1) / sqrt(1 - b2) ~ 3.2 lr per step.
        assert 0 < np.abs(a["images"] - b["images"]).max() < 20 * 3.2 * 0.01
        assert not np.array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["preprocess_mean"], b["preprocess_mean"])
    # With a validation split: the fine-tune holds out what the first run held out (same --val-size
    # and --seed), and refuses a split the first run fitted to.
    held = tmp_path / "held"
    assert run_cli("distill", "--out", held, "--learn-labels", "--val-size", "50", *FAST) == 0
    assert run_cli("distill", "--out", tmp_path / "held_tuned", "--init-from", held / "distilled.npz", "--val-size", "50",
                   "--lr", "0.01", *FAST) == 0
    with np.load(held / "distilled.npz") as a, np.load(tmp_path / "held_tuned" / "distilled.npz") as b:
        assert len(a["val_indices"]) == 50
        np.testing.assert_array_equal(a["val_indices"], b["val_indices"])
    for other in (["--val-size", "60"], ["--val-size", "50", "--seed", "1"]):
        assert run_cli("distill", "--out", tmp_path / "refused", "--init-from", held / "distilled.npz", *other, *FAST) == 2
        assert not (tmp_path / "refused").exists()
    # Zero steps from a file reproduces the file.
    zero = tmp_path / "zero"
    assert run_cli("distill", "--out", zero, "--init-from", start, "--steps", "0", "--ipc", "2", "--no-progress") == 0
    with np.load(start) as a, np.load(zero / "distilled.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_existing_run_is_not_overwritten_silently(tmp_path, capsys):
    assert run_cli("distill", "--out", tmp_path, "--steps", "0", "--ipc", "1", "--no-progress") == 0
    assert run_cli("distill", "--out", tmp_path, "--steps", "0", "--ipc", "1", "--no-progress") == 2
    assert "--resume" in capsys.readouterr().err
    assert run_cli("distill", "--out", tmp_path, "--steps", "0", "--ipc", "1", "--no-progress", "--overwrite") == 0
    assert run_cli("distill", "--out", tmp_path, "--steps", "5", "--ipc", "2", "--resume", "--no-progress") == 2


def test_get_nngp_distills_and_evaluates_with_the_exact_nngp(tmp_path):
    """`--get nngp`: KIP through the network's NNGP. The run's own test accuracy is what KRR with
    the NNGP (built independently by `evaluate_run`) gives for the set it wrote, not the NTK's."""
    from kip import run

    assert run_cli("distill", "--out", tmp_path / "run", "--get", "nngp", "--learn-labels", *FAST) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["get"] == "nngp"
    by_kernel = {get: run.evaluate_run(str(tmp_path / "run" / "distilled.npz"), kernel=run.KernelOptions("fc1", get=get),
                                       log=lambda _: None) for get in ("nngp", "ntk")}
    assert by_kernel["nngp"]["test_accuracy"] == metrics["test_accuracy"]
    assert by_kernel["nngp"]["test_mse"] != by_kernel["ntk"]["test_mse"]


def test_label_solve_improves_on_one_hot_labels(tmp_path):
    assert run_cli("label-solve", "--out", tmp_path, "--ipc", "2") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["target_size"] == 1437
    assert metrics["test_accuracy"] > metrics["initial_test_accuracy"]


def test_hard_labels_regress_on_the_one_hot_rows_of_the_set_s_argmax(tmp_path):
    """`kip evaluate --hard-labels` on a Label Solve set (real images, solved labels) equals the plain
    evaluation of a copy whose labels numpy replaced by centred one-hot rows of their argmax, and
    differs from the set's own labels."""
    assert run_cli("label-solve", "--out", tmp_path / "ls", "--ipc", "2") == 0
    solved = dict(np.load(tmp_path / "ls" / "distilled.npz"))
    hard = np.eye(10)[np.argmax(solved["labels"], axis=1)] - 0.1
    np.savez(tmp_path / "copy.npz", **{**solved, "labels": hard})
    results = {}
    for name, path, extra in (("own", tmp_path / "ls" / "distilled.npz", ()), ("flag", tmp_path / "ls" / "distilled.npz",
                              ("--hard-labels",)), ("copy", tmp_path / "copy.npz", ())):
        assert run_cli("evaluate", "--distilled", path, *extra, "--out", tmp_path / f"{name}.json") == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["flag"]["test_mse"] == pytest.approx(results["copy"]["test_mse"], rel=1e-9)
    assert results["flag"]["test_accuracy"] == results["copy"]["test_accuracy"]
    assert results["flag"]["labels"] == "hard" and results["own"]["labels"] == "set"
    assert results["own"]["test_mse"] != pytest.approx(results["flag"]["test_mse"], rel=1e-3)


def test_every_method_option_the_cli_accepts_is_one_its_config_reads():
    """`kip distill`'s table of per-method options and the configs they fill agree: an option the CLI lets a
    method take is a field of that method's config (`resume` is the run's, not the config's), and the options
    MethodConfig.check refuses for a method are the ones the CLI refuses for it."""
    from kip import cli_args, label_solve, method_run, run

    def fields(config):
        return {f.name for f in dataclasses.fields(config)} | {"resume"}

    reads = {"kip": fields(run.DistillConfig), "label-solve": fields(label_solve.LabelSolveConfig),
             **{m: fields(method_run.MethodConfig) for m in method_run.METHODS}}
    assert set(cli_args.DISTILL_METHODS) == set(reads)
    for name, methods in cli_args.DISTILL_OPTIONS.items():
        assert methods and all(name in reads[m] for m in methods), name
    for name, methods in method_run.METHOD_OPTIONS.items():
        assert set(cli_args.DISTILL_OPTIONS[name]) & set(method_run.METHODS) == set(methods), name


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "kip.cli", "--help"], capture_output=True, text=True, check=True)
    assert "distill" in out.stdout and "label-solve" in out.stdout


def test_version_is_the_installed_package_s(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"kip {version('kip')}"


def test_val_size_holds_rows_out_of_the_targets_and_judges_the_set_on_them(tmp_path, monkeypatch):
    """--val-size: that many training rows, none of the set's sources, leave KIP's targets (the
    training data its steps draw from) and are named in distilled.npz; val_accuracy is the KRR
    accuracy of the final set on them (numpy ridge solve on the fc1 kernel), best_val the best
    evaluation by it; the start is the run's without them."""
    from kip import kernels, preprocess

    seen = []
    train_data = distill.train_data
    monkeypatch.setattr(distill, "train_data", lambda images, *a, **k: seen.append(len(images)) or train_data(images, *a, **k))
    out, plain = tmp_path / "val", tmp_path / "plain"
    assert run_cli("distill", "--out", out, "--learn-labels", "--val-size", "200", *FAST) == 0
    assert run_cli("distill", "--out", plain, "--learn-labels", "--steps", "0", "--ipc", "2", "--no-progress") == 0
    from kip import data

    ds = data.load("digits")
    assert seen[0] == len(ds.y_train) - 200 and seen[1] == len(ds.y_train)
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "distilled.npz") as f, np.load(plain / "distilled.npz") as g:
        val, images, labels = f["val_indices"], f["images"], f["labels"]
        assert len(np.unique(val)) == 200 and not np.isin(f["initial_indices"], val).any()
        np.testing.assert_array_equal(f["initial_indices"], g["initial_indices"])
    x = preprocess.fit(ds.x_train, "standardize").apply(ds.x_train)[val]
    kernel_fn = kernels.preset("fc1").kernel_fn
    k_ss, k_vs = np.asarray(kernel_fn(images, None, "ntk")), np.asarray(kernel_fn(x, images, "ntk"))
    ridge = k_ss + 1e-6 * np.trace(k_ss) / len(k_ss) * np.eye(len(k_ss))
    predicted = k_vs @ np.linalg.solve(ridge, labels)
    assert metrics["val_accuracy"] == pytest.approx(np.mean(predicted.argmax(1) == ds.y_train[val]), abs=1e-12)
    best = max(metrics["evals"], key=lambda e: e["val_accuracy"])
    assert metrics["best_val"] == {"step": best["step"], "val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"]}
    assert run_cli("distill", "--out", tmp_path / "big", "--val-size", "100000", *FAST) == 2
    assert not (tmp_path / "big").exists()
    assert run_cli("distill", "--method", "mtt", "--expert-dir", tmp_path, "--out", tmp_path / "mtt", "--val-size", "10",
                   *FAST) == 2  # no experts there (tests/test_dd_frepo.py: MTT validates on rows its experts never saw)
    assert not (tmp_path / "mtt").exists()
