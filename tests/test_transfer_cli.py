"""`kip evaluate --method train | slapknn` end to end on the embedded digits: results, tuning,
the authors' format, and bad input (one line, exit 2, nothing written)."""

import json
import os

import numpy as np
import pytest

from kip import cli, data, preprocess

TRAIN = ["--method", "train", "--model", "fc1", "--width", "64", "--steps", "200", "--batch-size", "20", "--no-progress"]


def run_cli(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def real_support(tmp_path_factory):
    """A 5-per-class real support set of digits in our format (`kip distill --steps 0`)."""
    out = tmp_path_factory.mktemp("real")
    assert run_cli("distill", "--out", out, "--steps", "0", "--ipc", "5", "--no-progress") == 0
    return out / "distilled.npz"


def test_train_reports_mean_and_std_over_seeds(real_support, tmp_path):
    out = tmp_path / "result.json"
    assert run_cli("evaluate", "--distilled", real_support, *TRAIN, "--seeds", "3", "--mixup", "0.5",
                   "--label-smoothing", "0.1", "--out", out) == 0
    r = json.loads(out.read_text())
    accs = r["test_accuracies"]
    assert len(accs) == 3 and len(set(accs)) > 1  # the seeds differ
    np.testing.assert_allclose(r["test_accuracy_mean"], np.mean(accs))
    np.testing.assert_allclose(r["test_accuracy_std"], np.std(accs, ddof=1))
    assert r["test_accuracy_mean"] > 0.4  # 50 real digits, 200 steps, width 64 (measured ~0.56); chance is 0.1
    assert r["support_size"] == 50 and r["test_size"] == 360 and r["preprocessing"] == "from file"
    assert r["train_config"]["mixup"] == 0.5 and r["train_config"]["label_smoothing"] == 0.1
    assert r["model"] == "fc1" and r["width"] == 64 and r["seconds_per_network"] > 0


def test_tune_picks_the_best_pair_of_the_grid(real_support, tmp_path):
    out = tmp_path / "result.json"
    assert run_cli("evaluate", "--distilled", real_support, *TRAIN, "--seeds", "1", "--tune", "--steps", "20",
                   "--lr", "0.1", "--out", out) == 0
    r = json.loads(out.read_text())
    grid = r["tune_grid"]
    assert sorted({g["lr"] for g in grid}) == pytest.approx([0.01, 0.03, 0.1, 0.3])
    assert sorted({g["weight_decay"] for g in grid}) == [0.0, 1e-4, 1e-3] and len(grid) == 12
    best = max(grid, key=lambda g: g["val_accuracy"])
    assert (r["train_config"]["lr"], r["train_config"]["weight_decay"]) == (best["lr"], best["weight_decay"])


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
    assert run_cli("evaluate", "--distilled", tmp_path / "authors.npz", *TRAIN, "--seeds", "1", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["preprocessing"] == "fitted: standardise" and r["support_size"] == 40 and r["test_accuracy_mean"] > 0.4


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
        (["--distilled", "{real}", *TRAIN, "--model", "resnet9000"], "unknown model"),
        (["--distilled", "{real}", *TRAIN, "--loss", "xent"], "probability vectors"),
        (["--distilled", "{real}", *TRAIN, "--seeds", "0"], "--seeds must be at least 1"),
        (["--distilled", "{real}", *TRAIN, "--mixup", "-1"], "mixup must be"),
        (["--distilled", "{real}", *TRAIN, "--label-smoothing", "1"], "label smoothing"),
        (["--distilled", "{real}", *TRAIN, "--norm", "instance"], "conv nets only"),
        (["--distilled", "{real}", "--method", "slapknn", "--k", "0"], "k must be"),
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

    monkeypatch.setattr(train, "fit", no_training)
    assert transfer.train_networks(*args, cache_dir=str(tmp_path)) == first
    with pytest.raises(AssertionError, match="trained again"):  # other labels: the cache does not apply
        transfer.train_networks(net, x, -y, *args[3:], cache_dir=str(tmp_path))


def test_train_networks_stable_steps_the_lr_down_until_no_loss_diverges():
    """Labels of size 1e3 (KIP's learned labels grow large) blow up lr 100; lr 0.01 trains.
    The lr is chosen from the training loss alone, so the result equals plain training at that lr."""
    from kip import models, run, train, transfer

    ds = data.load("digits")
    x, y = ds.x_train[:40] / 16.0, 1e3 * np.asarray(data.one_hot(ds.y_train[:40], 10))
    net, config = models.build("fc1", 10, 32), train.TrainConfig(steps=20, batch_size=20, lr=100.0)
    args = (net, x, y, ds.x_test[:50] / 16.0, ds.y_test[:50])
    with pytest.raises(run.TrainingDiverged):
        transfer.train_networks(*args, config, seeds=1)
    stable = transfer.train_networks_stable(*args, config, lr_factors=(1.0, 1e-4), seeds=1)
    assert stable["lr"] == pytest.approx(1e-2)
    plain = transfer.train_networks(*args, train.TrainConfig(steps=20, batch_size=20, lr=1e-2), seeds=1)
    assert stable["test_accuracies"] == plain["test_accuracies"]
    with pytest.raises(run.TrainingDiverged):
        transfer.train_networks_stable(*args, config, lr_factors=(1.0, 0.9), seeds=1)


def test_train_networks_stable_resumes_without_training_anything_again(tmp_path, monkeypatch):
    """The diverged attempt is cached as such and each lr keeps its own networks, so a second
    call (a resumed run) trains nothing and returns the same figures."""
    from kip import models, train, transfer

    ds = data.load("digits")
    x, y = ds.x_train[:40] / 16.0, 1e3 * np.asarray(data.one_hot(ds.y_train[:40], 10))
    net, config = models.build("fc1", 10, 32), train.TrainConfig(steps=20, batch_size=20, lr=100.0)
    args = (net, x, y, ds.x_test[:50] / 16.0, ds.y_test[:50], config)
    first = transfer.train_networks_stable(*args, lr_factors=(1.0, 1e-4), seeds=2, cache_dir=str(tmp_path))
    assert first["lr"] == pytest.approx(1e-2)
    assert sorted(os.listdir(tmp_path / "lr-x0.0001")) == ["seed0-0.npz", "seed0-1.npz"]

    def no_training(*a, **k):
        raise AssertionError("a cached network was trained again")

    monkeypatch.setattr(train, "fit", no_training)
    assert transfer.train_networks_stable(*args, lr_factors=(1.0, 1e-4), seeds=2, cache_dir=str(tmp_path)) == first
