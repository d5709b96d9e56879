"""`kip evaluate --method train | slapknn` end to end on the embedded digits: the set beside random
subsets under a protocol, overrides, tuning, matched transfer, the cache, the authors' format, and
bad input (one line, exit 2, nothing written)."""

import json
import os

import numpy as np
import pytest

from kip import cli, data, preprocess

TRAIN = ["--method", "train", "--protocol", "kip", "--model", "fc1", "--norm", "none", "--width", "64", "--steps", "200",
         "--batch-size", "20", "--lr", "0.1", "--tune-lr", "0.1", "--tune-weight-decay", "0.001", "--val-size", "100",
         "--baseline-subsets", "2", "--no-progress"]


def run_cli(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def real_support(tmp_path_factory):
    """A 5-per-class real support set of digits in our format (`kip distill --steps 0`)."""
    out = tmp_path_factory.mktemp("real")
    assert run_cli("distill", "--out", out, "--steps", "0", "--ipc", "5", "--no-progress") == 0
    return out / "distilled.npz"


def test_train_reports_the_set_beside_random_subsets_and_records_the_overrides(real_support, tmp_path):
    out = tmp_path / "result.json"
    assert run_cli("evaluate", "--distilled", real_support, *TRAIN, "--networks", "3", "--cache-dir", tmp_path / "nets",
                   "--out", out) == 0
    r = json.loads(out.read_text())
    accs = r["set"]["test_accuracies"]
    assert len(accs) == 3 and len(set(accs)) > 1  # the networks differ
    np.testing.assert_allclose(r["set"]["mean"], np.mean(accs))
    np.testing.assert_allclose(r["set"]["std"], np.std(accs, ddof=1))
    assert r["set"]["mean"] > 0.4  # 50 real digits, 200 steps, width 64; chance is 0.1
    assert len(r["random"]["test_accuracies"]) == 2 and r["random"]["subsets"] == 2
    np.testing.assert_allclose(r["difference"], r["set"]["mean"] - r["random"]["mean"])
    assert r["support_size"] == 50 and r["test_size"] == 360 and r["preprocessing"] == "from file"
    assert r["overrides"]["model"] == "fc1" and r["overrides"]["width"] == 64 and r["overrides"]["steps"] == 200
    assert r["card"]["model"] == "fc1" and r["train_config"]["steps"] == 200 and r["protocol"] == "kip"
    assert r["validation"] == {"size": 100, "excludes_sources": 50, "excludes_subsets": 100, "from_set_held_out": False}
    assert r["environment"]["commit"]
    # run again: every network comes from the cache, the same figures
    again = tmp_path / "again.json"
    assert run_cli("evaluate", "--distilled", real_support, *TRAIN, "--networks", "3", "--cache-dir", tmp_path / "nets",
                   "--out", again) == 0
    assert json.loads(again.read_text())["set"] == r["set"]


def test_val_from_set_validates_on_the_rows_the_sets_run_held_out(tmp_path):
    """(Which rows: tests/test_protocols.py.) The set's file carries its run's val_indices; the
    evaluation draws its validation from them and says so."""
    run = tmp_path / "run"
    assert run_cli("distill", "--out", run, "--steps", "0", "--ipc", "2", "--val-size", "200", "--no-progress") == 0
    out = tmp_path / "result.json"
    args = [a if a != "100" else "50" for a in TRAIN]  # --val-size 50 of the 200 (less the random subsets' images)
    assert run_cli("evaluate", "--distilled", run / "distilled.npz", *args, "--steps", "20", "--val-from-set",
                   "--cache-dir", tmp_path / "nets", "--out", out) == 0
    assert json.loads(out.read_text())["validation"] == {"size": 50, "excludes_sources": 20, "excludes_subsets": 40,
                                                         "from_set_held_out": True}


def test_diverged_networks_are_counted_not_averaged(real_support, tmp_path):
    out = tmp_path / "result.json"
    args = [a for a in TRAIN]
    args[args.index("--tune-lr") + 1] = "1e4"  # every network's loss becomes NaN
    args[args.index("--steps") + 1] = "20"
    assert run_cli("evaluate", "--distilled", real_support, *args, "--networks", "2", "--cache-dir", tmp_path / "n",
                   "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["set"]["diverged"] == 2 and np.isnan(r["set"]["mean"]) and r["random"]["diverged"] == 2


def test_tuning_picks_the_best_pair_of_the_grid_on_validation(real_support, tmp_path):
    out = tmp_path / "result.json"
    args = [a for a in TRAIN]
    args[args.index("--tune-lr") + 1: args.index("--tune-lr") + 2] = ["0.01", "0.1"]
    args[args.index("--tune-weight-decay") + 1: args.index("--tune-weight-decay") + 2] = ["0", "0.001"]
    args[args.index("--steps") + 1] = "20"
    assert run_cli("evaluate", "--distilled", real_support, *args, "--networks", "1", "--cache-dir", tmp_path / "n",
                   "--out", out) == 0
    r = json.loads(out.read_text())
    grid = r["set"]["tune_grid"]
    assert [(g["lr"], g["weight_decay"]) for g in grid] == [(0.01, 0.0), (0.01, 0.001), (0.1, 0.0), (0.1, 0.001)]
    best = max(grid, key=lambda g: g["val_accuracy"])
    assert (r["set"]["lr"], r["set"]["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert r["random"]["tune_grid"] is not None


def test_matched_transfer_trains_the_kernels_own_network(real_support, tmp_path):
    out = tmp_path / "result.json"
    args = [a for a in TRAIN if a not in ("--model", "fc1")]
    assert run_cli("evaluate", "--distilled", real_support, *args, "--matched", "--networks", "1", "--baseline-subsets",
                   "1", "--steps", "5", "--cache-dir", tmp_path / "n", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["matched"] and r["kernel"] == "fc1" and r["card"]["model"] == "fc1"


def brute_force_slapknn(prototypes, labels, queries, k):
    """SLaPkNN written out point by point: the reference for the library's blocked version."""
    out = []
    for q in queries:
        d = np.sqrt(((prototypes - q) ** 2).sum(axis=1))
        nearest = np.argsort(d, kind="stable")[:k]
        out.append(np.argmax((labels[nearest] / d[nearest, None]).sum(axis=0)))
    return np.array(out)


def test_slapknn_on_a_distilled_file(real_support, tmp_path):
    out = tmp_path / "result.json"
    assert run_cli("evaluate", "--distilled", real_support, "--method", "slapknn", "--k", "4", "--out", out) == 0
    r = json.loads(out.read_text())
    with np.load(real_support) as f:
        images, labels = f["images"], f["labels"]
        prep = preprocess.Preprocessing.from_arrays(f)
    ds = data.digits()
    flat = lambda x: x.reshape(len(x), -1)
    expected = brute_force_slapknn(flat(images), labels, flat(prep.apply(ds.x_test)), 4)
    assert r["test_accuracy"] == pytest.approx(np.mean(expected == ds.y_test))
    assert r["k"] == 4 and r["test_accuracy"] > 0.7


def test_authors_format_is_trained_on_with_preprocessing_fitted_on_train(tmp_path):
    ds = data.digits()
    prep = preprocess.fit(ds.x_train)
    idx = np.arange(40)
    np.savez(tmp_path / "authors.npz", images=prep.apply(ds.x_train[idx]), labels=ds.y_train[idx])
    out = tmp_path / "result.json"
    assert run_cli("evaluate", "--distilled", tmp_path / "authors.npz", *TRAIN, "--networks", "1", "--cache-dir",
                   tmp_path / "n", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["preprocessing"] == "stated: standardize, fitted on train" and r["support_size"] == 40
    assert r["set"]["mean"] > 0.4 and r["validation"]["excludes_sources"] == 0  # its sources are unknown


def test_krr_stays_the_default_method(real_support, tmp_path):
    out = tmp_path / "result.json"
    assert run_cli("evaluate", "--distilled", real_support, "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["kernel"] == "fc1" and "test_mse" in r and "method" not in r


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distilled", "{tmp}/wronglabels.npz", *TRAIN], "labels have shape (10, 3), need (10, 10)"),
        (["--distilled", "{tmp}/wronglabels.npz", "--method", "slapknn"], "labels have shape"),
        (["--distilled", "{tmp}/empty.npz", *TRAIN], "empty"),
        (["--distilled", "{tmp}/empty.npz", "--method", "slapknn"], "empty"),
        (["--distilled", "{tmp}/smallset.npz", "--dataset", "small", "--data-dir", "{tmp}", *TRAIN, "--model", "convnet"],
         "at least 8x8"),
        (["--distilled", "{real}", *TRAIN, "--model", "resnet9000"], "model must be one of"),
        (["--distilled", "{real}", *TRAIN, "--protocol", "nope"], "unknown protocol 'nope'"),
        (["--distilled", "{real}", *TRAIN, "--networks", "0"], "networks must be at least 1"),
        (["--distilled", "{real}", *TRAIN, "--augment", "dsa:warp"], "unknown: 'warp'"),
        (["--distilled", "{real}", *TRAIN, "--norm", "instance"], "conv nets only"),
        (["--distilled", "{real}", *TRAIN, "--matched", "--model", "fc2"], "leave out --model"),
        (["--distilled", "{real}", "--method", "slapknn", "--k", "0"], "k must be"),
        (["--distilled", "{real}", *TRAIN, "--val-from-set"], "holds no held-out rows"),
        (["--distilled", "{real}", "--val-from-set"], "--val-from-set applies to --method train only"),
        (["--distilled", "{real}", "--seed", "1", "--method", "slapknn"], "--seed applies to --method krr / train only"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(real_support, tmp_path, capsys, args, message):
    np.savez(tmp_path / "wronglabels.npz", images=np.zeros((10, 8, 8, 1)), labels=np.zeros((10, 3)))
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8, 1)), labels=np.zeros((0, 10)))
    np.savez(tmp_path / "small.npz", x_train=np.random.rand(20, 4, 4), y_train=np.arange(20) % 2,
             x_test=np.random.rand(4, 4, 4), y_test=np.arange(4) % 2)
    np.savez(tmp_path / "smallset.npz", images=np.zeros((4, 4, 4, 1)), labels=np.arange(4) % 2)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{real}", str(real_support)) for a in args]
    out = tmp_path / "out.json"
    assert run_cli("evaluate", *args, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kip: error:") and message in err[0], err
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_train_networks_reuses_finished_networks_and_retrains_on_new_data(tmp_path, monkeypatch):
    from kip import models, train, transfer

    ds = data.load("digits")
    x, y = ds.x_train[:40] / 16.0, np.asarray(data.one_hot(ds.y_train[:40], 10))
    net, config = models.build("fc1", 10, 32), train.TrainConfig(steps=20, batch_size=20)
    args = (net, x, y, ds.x_test[:50] / 16.0, ds.y_test[:50], config, 2, 0)
    first = transfer.train_networks(*args, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2

    def no_training(*a, **k):
        raise AssertionError("a cached network was trained again")

    monkeypatch.setattr(train, "fit_many", no_training)
    assert transfer.train_networks(*args, cache_dir=str(tmp_path)) == first
    with pytest.raises(AssertionError, match="trained again"):  # other labels: the cache does not apply
        transfer.train_networks(net, x, -y, *args[3:], cache_dir=str(tmp_path))


def test_train_networks_stable_steps_the_lr_down_until_no_loss_diverges():
    """Labels of size 1e3 (KIP's learned labels grow large) blow up lr 100; lr 0.01 trains.
    The lr is chosen from the training loss alone, so the result equals plain training at that lr."""
    from kip import TrainingDiverged, models, train, transfer

    ds = data.load("digits")
    x, y = ds.x_train[:40] / 16.0, 1e3 * np.asarray(data.one_hot(ds.y_train[:40], 10))
    net, config = models.build("fc1", 10, 32), train.TrainConfig(steps=20, batch_size=20, lr=100.0)
    args = (net, x, y, ds.x_test[:50] / 16.0, ds.y_test[:50])
    with pytest.raises(TrainingDiverged):
        transfer.train_networks(*args, config, seeds=1)
    stable = transfer.train_networks_stable(*args, config, lr_factors=(1.0, 1e-4), seeds=1)
    assert stable["lr"] == pytest.approx(1e-2)
    plain = transfer.train_networks(*args, train.TrainConfig(steps=20, batch_size=20, lr=1e-2), seeds=1)
    assert stable["test_accuracies"] == plain["test_accuracies"]
    with pytest.raises(TrainingDiverged):
        transfer.train_networks_stable(*args, config, lr_factors=(1.0, 0.9), seeds=1)


def test_train_networks_stable_resumes_without_training_anything_again(tmp_path, monkeypatch):
    """The diverged attempt is cached as such, so a second call (a resumed run) trains nothing
    and returns the same figures."""
    from kip import models, train, transfer

    ds = data.load("digits")
    x, y = ds.x_train[:40] / 16.0, 1e3 * np.asarray(data.one_hot(ds.y_train[:40], 10))
    net, config = models.build("fc1", 10, 32), train.TrainConfig(steps=20, batch_size=20, lr=100.0)
    args = (net, x, y, ds.x_test[:50] / 16.0, ds.y_test[:50], config)
    first = transfer.train_networks_stable(*args, lr_factors=(1.0, 1e-4), seeds=2, cache_dir=str(tmp_path))
    assert first["lr"] == pytest.approx(1e-2) and len(os.listdir(tmp_path)) == 4  # 2 diverged, 2 trained

    def no_training(*a, **k):
        raise AssertionError("a cached network was trained again")

    monkeypatch.setattr(train, "fit_many", no_training)
    assert transfer.train_networks_stable(*args, lr_factors=(1.0, 1e-4), seeds=2, cache_dir=str(tmp_path)) == first


def test_the_library_result_names_the_code_it_started_from(real_support, commits_during_runs):
    """`transfer.protocol_run` (what `kip evaluate --method train` and the zoo call) trains for
    minutes to hours: its environment names the code it started from, not a commit made meanwhile."""
    from kip import transfer

    r = transfer.protocol_run(str(real_support), "digits", None, "kip",
                              dict(model="fc1", norm="none", width=16, steps=20, batch_size=20, lr=0.1, tune_lr=[0.1],
                                   tune_weight_decay=[0.001], val_size=100, networks=1, baseline_subsets=1),
                              progress=False, log=lambda _: None)
    assert commits_during_runs[0] >= 1 and r["environment"]["commit"] == "c0"
