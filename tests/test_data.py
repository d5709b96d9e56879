"""Data loading (digits, npz, TFDS under mock data), validation of bad input, preprocessing."""


import jax
import numpy as np
import pytest

from kip import InputError, data, preprocess


def write_npz(path, **overrides):
    rng = np.random.RandomState(0)
    arrays = {
        "x_train": rng.randint(0, 255, (40, 6, 5)).astype(np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": rng.randint(0, 255, (12, 6, 5)).astype(np.uint8),
        "y_test": np.arange(12) % 4,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_digits_is_embedded_and_split():
    ds = data.load()
    assert ds.name == "digits"
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.num_classes == 10 and ds.x_train.dtype == np.float32
    assert set(np.unique(ds.y_test)) == set(range(10))


def test_npz_round_trip(tmp_path):
    path = write_npz(tmp_path / "toy.npz")
    ds = data.load("toy", str(tmp_path))
    assert ds.x_train.shape == (40, 6, 5, 1) and ds.num_classes == 4
    with np.load(path) as f:
        np.testing.assert_array_equal(ds.x_train[..., 0], f["x_train"])
        np.testing.assert_array_equal(ds.y_test, f["y_test"])


def test_real_mnist(shared_datasets):
    ds = data.load("mnist", shared_datasets)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_allclose(ds.x_train.mean() / 255, 0.1307, atol=1e-4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"y_train": None}, "missing key"),
        ({"x_train": np.zeros((40, 6), np.uint8)}, "must be N x H x W"),
        ({"x_test": np.zeros((12, 5, 6), np.uint8)}, "test images are"),
        ({"y_train": np.arange(39) % 4}, "one label per image"),
        ({"y_train": (np.arange(40) % 4) + 1}, "class 0 has no training image"),
        ({"y_test": np.full(12, 7)}, "labels must lie in 0..C-1"),
        ({"y_test": -np.ones(12)}, "labels must lie in 0..C-1"),
        ({"y_train": (np.arange(40) % 4) + 0.5}, "integer class labels"),
        ({"x_train": np.full((40, 6, 5), np.nan)}, "NaN or inf"),
        ({"x_test": np.zeros((0, 6, 5))}, "empty"),
    ],
)
def test_bad_npz_is_rejected_with_a_clear_message(tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(InputError, match=message):
        data.load("bad", str(tmp_path))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="no file"):
        data.load("nothing", str(tmp_path))
    (tmp_path / "broken.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(InputError, match="not a readable .npz"):
        data.load("broken", str(tmp_path))


def test_unknown_dataset_without_data_dir_names_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name.startswith("tensorflow_datasets"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(InputError, match="--data-dir"):
        data.load("mnist")


def test_tfds_loader_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    with tfds.testing.mock_data(num_examples=120, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("mnist")
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (120, 28, 28, 1) and ds.x_test.shape == (120, 28, 28, 1)
    assert ds.y_train.min() >= 0 and ds.y_train.max() <= 9


def test_class_balanced_subset_and_too_many_per_class():
    labels = np.repeat(np.arange(3), [5, 9, 4])
    idx = data.balanced_subset(jax.random.PRNGKey(0), labels, 3, 4)
    np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(3), 4))
    assert len(set(idx.tolist())) == 12
    with pytest.raises(InputError, match="class 0 has only 5"):
        data.balanced_subset(jax.random.PRNGKey(0), labels, 3, 6)


def test_one_hot_centred():
    y = np.asarray(data.one_hot(np.array([0, 2]), 10))
    np.testing.assert_allclose(y[0, 0], 0.9)
    np.testing.assert_allclose(y[0, 1], -0.1)
    np.testing.assert_allclose(y.sum(1), 0, atol=1e-6)


# --------------------------------------------------------------------------- preprocessing


def images(n=50, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.rand(n, 4, 4, 3) * np.array([10.0, 50.0, 200.0]) + np.array([1.0, -5.0, 30.0])).astype(np.float32)


def test_standardisation_uses_train_statistics_per_channel():
    x = images()
    prep = preprocess.fit(x)
    z = prep.apply(x)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-12)
    np.testing.assert_allclose(prep.invert_standardisation(z), x, rtol=1e-6)
    test, x = images(seed=1).astype(np.float64), x.astype(np.float64)
    np.testing.assert_allclose(prep.apply(test), (test - x.mean((0, 1, 2))) / x.std((0, 1, 2)), rtol=1e-10)


def test_zca_recipe_whitens_and_round_trips_through_arrays():
    x = images(n=400)
    prep = preprocess.fit(x, "kip-zca")
    z = prep.apply(x).reshape(400, -1)
    # the recipe: standardise, layer-normalise each image, then W = U (S + reg)^-1/2 U^T
    x64 = x.astype(np.float64)
    s = ((x64 - x64.mean((0, 1, 2))) / x64.std((0, 1, 2))).reshape(400, -1)
    s = s - s.mean(1, keepdims=True)
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    cov = s.T @ s / 400
    evals, evecs = np.linalg.eigh(cov)
    reg = 0.1 * np.trace(cov) / 48
    np.testing.assert_allclose(z, s @ evecs @ np.diag((evals + reg) ** -0.5) @ evecs.T, rtol=1e-8, atol=1e-10)
    # whitened: covariance eigenvalues are s / (s + reg) <= 1
    assert np.linalg.eigvalsh(z.T @ z / 400).max() <= 1 + 1e-9
    again = preprocess.Preprocessing.from_arrays(prep.to_arrays())
    np.testing.assert_array_equal(again.apply(x), prep.apply(x))
    assert preprocess.Preprocessing.from_arrays({"images": x}) is None


def test_preprocessing_rejects_wrong_channels():
    prep = preprocess.fit(images())
    with pytest.raises(InputError, match="channels"):
        prep.apply(np.zeros((2, 4, 4, 1)))
