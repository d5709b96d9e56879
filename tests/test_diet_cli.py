"""`kip score`, `kip prune`, `kip train` end to end on the embedded digits with tiny networks:
the files and their contents, resumption per run, and bad input (one line, exit 2, nothing written)."""

import json
import os

import numpy as np
import pytest

from kip import cli, data, diet

# FC1 of width 16, 3 epochs of 1437 / 64 = 22 steps: seconds per network
RECIPE = ["--model", "fc1", "--width", "16", "--epochs", "3", "--batch-size", "64", "--lr", "0.1", "--no-progress"]


def run_cli(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def el2n_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "el2n.npz"
    assert run_cli("score", "--score", "el2n", "--runs", "2", "--epoch", "2", "--out", out, *RECIPE) == 0
    return out


def test_score_file_holds_one_mean_score_per_example_in_the_data_sets_order(el2n_file):
    ds = data.load("digits")
    with np.load(el2n_file) as f:
        s, labels, per_run, meta = f["scores"], f["labels"], f["per_run"], json.loads(str(f["meta"]))
    assert s.shape == (1437,) and per_run.shape == (2, 1437)
    np.testing.assert_array_equal(labels, ds.y_train)
    np.testing.assert_allclose(s, per_run.mean(axis=0))
    assert np.all((s >= 0) & (s <= np.sqrt(2))) and not np.allclose(per_run[0], per_run[1])  # runs differ
    assert meta["score"] == "el2n" and meta["runs"] == 2 and meta["epoch"] == 2 and meta["model"] == "fc1"
    assert meta["train_config"]["steps"] == 3 * (1437 // 64) and meta["train_config"]["nesterov"]
    assert meta["fingerprint"] == diet.fingerprint(ds)
    assert os.path.exists(el2n_file.with_suffix(".png"))
    # trained for 2 epochs the network has learned: mean EL2N below chance's sqrt(0.9) = 0.95 (measured: 0.75)
    assert s.mean() < 0.8


def test_score_runs_are_resumed_and_extended(el2n_file, tmp_path):
    runs_dir = el2n_file.parent / "el2n-runs"
    first = np.load(runs_dir / "run-001.npz")["el2n"]
    stamp = os.path.getmtime(runs_dir / "run-000.npz")
    os.remove(runs_dir / "run-001.npz")  # as if interrupted during the second run
    out = el2n_file.parent / "el2n.npz"
    assert run_cli("score", "--score", "el2n", "--runs", "3", "--epoch", "2", "--out", out, *RECIPE) == 0
    assert os.path.getmtime(runs_dir / "run-000.npz") == stamp  # reused, not recomputed
    np.testing.assert_array_equal(np.load(runs_dir / "run-001.npz")["el2n"], first)  # recomputed identically
    with np.load(out) as f:
        assert f["per_run"].shape == (3, 1437)
    # other options in the same place: refused unless --overwrite
    assert run_cli("score", "--score", "el2n", "--runs", "3", "--epoch", "1", "--out", out, *RECIPE) == 2


def test_forgetting_scores_count_events_within_the_epochs(tmp_path):
    got = {}
    for convention in ("inf", "presentations"):
        out = tmp_path / f"{convention}.npz"
        assert run_cli("score", "--score", "forgetting", "--runs", "1", "--epoch", "3", "--never-learned", convention,
                       "--out", out, *RECIPE) == 0
        got[convention] = np.load(out)["scores"]
    learned = np.isfinite(got["inf"])
    assert 0 < learned.mean() < 1  # the same network (same seed): some examples never learned in 3 epochs
    np.testing.assert_array_equal(got["presentations"][learned], got["inf"][learned])
    # 3 presentations hold at most one correct -> incorrect event (1 0 1 0 would need 4)
    assert set(np.unique(got["inf"][learned])) == {0, 1}
    # never learned: the example's presentations, 3 unless it fell in an epoch's dropped remainder
    # (29 of 1437 examples each epoch)
    presented = got["presentations"][~learned]
    assert set(np.unique(presented)) <= {1, 2, 3} and np.mean(presented == 3) > 0.9


def test_prune_then_train_on_the_subsets(el2n_file, tmp_path):
    kept, rand, balanced = tmp_path / "kept.npz", tmp_path / "rand.npz", tmp_path / "balanced.npz"
    assert run_cli("prune", "--scores", el2n_file, "--keep", "0.3", "--offset", "0.1", "--out", kept) == 0
    assert run_cli("prune", "--scores", el2n_file, "--keep", "0.3", "--random", "--class-balanced", "--out", rand) == 0
    assert run_cli("prune", "--scores", el2n_file, "--keep", "0.3", "--class-balanced", "--out", balanced) == 0
    s, labels = np.load(el2n_file)["scores"], np.load(el2n_file)["labels"]
    idx = np.load(kept)["indices"]
    order = np.argsort(-s, kind="stable")
    assert len(idx) == round(0.3 * 1437) and set(idx) == set(order[144:144 + 431])  # after the 144 hardest
    for path in (rand, balanced):
        counts = np.bincount(labels[np.load(path)["indices"]], minlength=10)
        assert np.all(np.abs(counts - 0.3 * np.bincount(labels)) <= 1)
    out = tmp_path / "curve.json"
    assert run_cli("train", "--subset", kept, rand, "--seeds", "2", "--out", out, *RECIPE) == 0
    r = json.loads(out.read_text())
    assert [row["size"] for row in r["rows"]] == [431, 431] and [row["score"] for row in r["rows"]] == ["el2n", "random"]
    assert r["train_config"]["steps"] == 3 * (1437 // 64)  # the full data's steps, not the subset's
    for row in r["rows"]:
        assert len(row["test_accuracies"]) == 2 and 0.3 < row["test_accuracy_mean"] <= 1
    assert os.path.exists(tmp_path / "curve.png")


def write_digits(path, order=None, drop=0):
    ds = data.load("digits")
    idx = np.arange(len(ds.y_train)) if order is None else order
    idx = idx[drop:]
    np.savez(path, x_train=ds.x_train[idx], y_train=ds.y_train[idx], x_test=ds.x_test, y_test=ds.y_test)


def test_a_subset_of_another_data_set_or_order_is_refused(el2n_file, tmp_path, capsys):
    kept = tmp_path / "kept.npz"
    assert run_cli("prune", "--scores", el2n_file, "--keep", "0.5", "--out", kept) == 0
    write_digits(tmp_path / "shuffled.npz", order=np.random.RandomState(0).permutation(1437))
    write_digits(tmp_path / "fewer.npz", drop=37)
    for name in ("shuffled", "fewer"):
        capsys.readouterr()
        out = tmp_path / f"{name}.json"
        assert run_cli("train", "--dataset", name, "--data-dir", tmp_path, "--subset", kept, "--out", out, *RECIPE) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kip: error:") and "another data set or another order" in err[0]
        assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["prune", "--keep", "0"], "must lie in (0, 1]"),
    (["prune", "--keep", "1.5"], "must lie in (0, 1]"),
    (["prune", "--keep", "0.6", "--offset", "0.5"], "must not exceed 1"),
    (["score", "--runs", "0"], "--runs must be at least 1"),
    (["score", "--runs", "3", "--seed", str(2**32 - 2)], "seeds 4294967294..4294967296"),
    (["score", "--epoch", "4"], "--epoch must lie in 0..3"),
    (["score", "--model", "resnet9000"], "unknown model"),
    (["train", "--subset", "SCORES"], "not a kip subset file"),
    (["prune", "--scores", "MISSING", "--keep", "0.5"], "no such file"),
])
def test_bad_input_one_line_exit_2_nothing_written(el2n_file, tmp_path, capsys, args, message):
    out = tmp_path / "out.npz"
    args = [str(el2n_file) if a == "SCORES" else str(tmp_path / "missing.npz") if a == "MISSING" else a for a in args]
    defaults = {"prune": ["--scores", str(el2n_file)], "score": ["--score", "el2n", "--epoch", "1", *RECIPE],
                "train": RECIPE}
    args = [args[0], *defaults[args[0]], *args[1:]]  # the case's options come last and win
    capsys.readouterr()
    assert run_cli(*args, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kip: error:") and message in err[0], err
    assert not out.exists() and not (tmp_path / "out-runs").exists()


def test_default_model_follows_the_data_shape():
    assert diet.default_model((32, 32, 3)) == "resnet18"
    assert diet.default_model((28, 28, 1)) == "convnet"
    assert diet.default_model((8, 8, 1)) == "convnet"
    assert diet.default_model((4, 4, 1)) == "fc1"
