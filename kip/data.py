"""Labelled image data sets: the embedded default (scikit-learn's `digits`), local `.npz`
files in Keras' `mnist.npz` layout, and TFDS; plus class-balanced sampling."""

from __future__ import annotations

import dataclasses
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from kip import InputError

DEFAULT_DATASET = "digits"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images as float32 (N, H, W, C) in their original scale; labels int32 in 0..C-1."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load(name: str = DEFAULT_DATASET, data_dir: str | None = None) -> Dataset:
    """Loads a data set by name.

    `digits` is embedded (no download). With `data_dir`, reads `data_dir/NAME.npz`
    (keys x_train, y_train, x_test, y_test). Otherwise asks TFDS, when installed.
    Raises `InputError` with one clear line for anything missing or malformed.
    """
    if data_dir is not None:
        path = os.path.join(data_dir, f"{name}.npz")
        if not os.path.exists(path):
            if name == DEFAULT_DATASET:
                return digits()
            raise InputError(f"dataset {name!r}: no file {path} (pass --data-dir with a folder holding {name}.npz, "
                             "or leave --data-dir out to load it through TFDS)")
        return from_npz(path, name)
    if name == DEFAULT_DATASET:
        return digits()
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        raise InputError(
            f"dataset {name!r} not found: pass --data-dir DIR with DIR/{name}.npz "
            "(keys x_train, y_train, x_test, y_test), or install the tfds extra (pip install 'kip[tfds]')"
        ) from None
    return from_tfds(name)


def digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16): a
    fixed stratified 80/20 split, 1437 train / 360 test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return validated("digits", x_train, y_train, x_test, y_test)


def from_npz(path: str, name: str | None = None) -> Dataset:
    """Reads an `.npz` with x_train, y_train, x_test, y_test (images N x H x W [x C])."""
    name = name or os.path.splitext(os.path.basename(path))[0]
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _NPZ_KEYS if k not in f.files]
            if missing:
                raise InputError(f"{path}: missing key(s) {', '.join(missing)} (need {', '.join(_NPZ_KEYS)})")
            arrays = {k: f[k] for k in _NPZ_KEYS}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    return validated(name, **arrays)


def from_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """Loads the `train` and `test` splits of a TFDS image classification data set."""
    import tensorflow_datasets as tfds

    try:
        splits, info = tfds.load(name, split=["train", "test"], as_supervised=True, with_info=True, data_dir=data_dir)
    except Exception as e:  # tfds raises many types: unknown name, no network, ...
        raise InputError(f"dataset {name!r}: TFDS could not load it ({type(e).__name__}: {e}); without TFDS, pass "
                         f"--data-dir DIR with DIR/{name}.npz (keys x_train, y_train, x_test, y_test)") from None
    arrays = []
    for split in splits:
        images, labels = zip(*tfds.as_numpy(split.batch(4096)))
        arrays += [np.concatenate(images), np.concatenate(labels)]
    label = info.features["label"] if "label" in info.features else None
    return validated(name, *arrays, num_classes=getattr(label, "num_classes", None))


def validated(name: str, x_train, y_train, x_test, y_test, num_classes: int | None = None) -> Dataset:
    """Checks shapes, labels and values, and returns a `Dataset` (images as NHWC float32).

    num_classes: C when known (TFDS metadata); otherwise the largest training label + 1.
    """
    images = {"x_train": np.asarray(x_train), "x_test": np.asarray(x_test)}
    labels = {"y_train": np.asarray(y_train), "y_test": np.asarray(y_test)}
    for key, x in images.items():
        if x.ndim == 3:
            images[key] = x = x[..., None]
        if x.ndim != 4:
            raise InputError(f"{name}: {key} must be N x H x W or N x H x W x C images, got shape {x.shape}")
        if x.shape[0] == 0:
            raise InputError(f"{name}: {key} is empty")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise InputError(f"{name}: {key} has dtype {x.dtype}, need real numbers")
        if not np.all(np.isfinite(x)):
            raise InputError(f"{name}: {key} contains NaN or inf")
    if images["x_train"].shape[1:] != images["x_test"].shape[1:]:
        raise InputError(
            f"{name}: train images are {images['x_train'].shape[1:]} but test images are {images['x_test'].shape[1:]}"
        )
    for key, y in labels.items():
        x_key = "x" + key[1:]
        if y.ndim != 1 or y.shape[0] != images[x_key].shape[0]:
            raise InputError(f"{name}: {key} must be one label per image ({images[x_key].shape[0]}), got shape {y.shape}")
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError(f"{name}: {key} must hold integer class labels")
    y_train, y_test = labels["y_train"].astype(np.int64), labels["y_test"].astype(np.int64)
    num_classes = int(num_classes or y_train.max() + 1)
    present = np.bincount(y_train[y_train >= 0], minlength=num_classes)
    if (y_train.min() < 0 or y_test.min() < 0 or max(y_train.max(), y_test.max()) >= num_classes
            or np.any(present == 0)):
        absent = np.flatnonzero(present == 0)
        detail = f"; class {absent[0]} has no training image" if len(absent) else ""
        raise InputError(
            f"{name}: labels must lie in 0..C-1 with every class in train (train labels span "
            f"{y_train.min()}..{y_train.max()}, test {y_test.min()}..{y_test.max()}){detail}"
        )
    return Dataset(
        name,
        images["x_train"].astype(np.float32),
        y_train.astype(np.int32),
        images["x_test"].astype(np.float32),
        y_test.astype(np.int32),
        num_classes,
    )


def one_hot(labels, num_classes: int, centred: bool = True, dtype=jnp.float32) -> jax.Array:
    """(n,) int labels -> (n, C) one-hot, minus 1/C when centred (KIP's -0.1 / 0.9 for C = 10)."""
    y = jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=dtype)
    return y - 1.0 / num_classes if centred else y


def hard_labels(label_rows, num_classes: int, centred: bool = True, dtype=jnp.float32) -> jax.Array:
    """A set's label rows (n, C) -> one-hot rows (n, C) of their argmax (what hard-label protocols train on)."""
    return one_hot(np.argmax(np.asarray(label_rows), axis=1), num_classes, centred, dtype)


def class_table(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each class, padded: ((C, max_count) int32, (C,) counts)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    table = np.zeros((num_classes, counts.max()), np.int32)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        table[c, : len(idx)] = idx
    return table, counts.astype(np.int32)


def check_per_class(per_class: int, counts: np.ndarray, what: str) -> None:
    """Raises `InputError` if some class has fewer than `per_class` examples."""
    if per_class < 1:
        raise InputError(f"{what}: need at least 1 image per class, got {per_class}")
    short = np.flatnonzero(np.asarray(counts) < per_class)
    if len(short):
        c = int(short[0])
        raise InputError(f"{what}: {per_class} per class requested but class {c} has only {int(counts[c])} training images")


def balanced_sample(key: jax.Array, table: jax.Array, counts: jax.Array, size: int) -> jax.Array:
    """`size` indices drawn without replacement, as evenly over classes as possible
    (each class floor or ceil of size/C), in class-interleaved order. Jittable.

    table, counts: from `class_table`; each class needs ceil(size/C) members.
    """
    picked = per_class_sample(key, table, counts, -(-size // table.shape[0]))  # (C, per_class)
    return picked.T.reshape(-1)[:size]


def per_class_sample(key: jax.Array, table: jax.Array, counts: jax.Array, per_class: int) -> jax.Array:
    """(C, per_class) indices: `per_class` members of each class drawn without replacement
    (a uniform subset of the class). Jittable; table, counts from `class_table`."""
    width = table.shape[1]
    u = jax.random.uniform(key, table.shape, jnp.float32)  # float32: XLA's CPU top_k is 10x faster
    u = jnp.where(jnp.arange(width)[None, :] < counts[:, None], u, 2.0)  # padding never wins
    _, pos = jax.lax.top_k(-u, per_class)  # the per_class smallest uniforms: a uniform subset
    return jnp.take_along_axis(table, pos, axis=1)


def balanced_subset(key: jax.Array, labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """Exactly `per_class` indices of each class, class-sorted (for support initialisation)."""
    table, counts = class_table(labels, num_classes)
    check_per_class(per_class, counts, "support")
    idx = balanced_sample(key, jnp.asarray(table), jnp.asarray(counts), per_class * num_classes)
    idx = np.asarray(idx).reshape(per_class, num_classes).T.reshape(-1)
    return idx


DEFAULT_VAL_SIZE = 5000  # the transfer recipe's validation split of train


def validation_split(key: jax.Array, n: int, size: int = DEFAULT_VAL_SIZE, exclude: np.ndarray | None = None) -> np.ndarray:
    """`min(size, n // 5)` random indices of n training examples, held out for validation, none
    of them in `exclude` (e.g. a distilled set's source images)."""
    size = min(size, n // 5)
    if size < 1:
        raise InputError(f"no room for a validation split in {n} training examples")
    order = np.asarray(jax.random.permutation(key, n))
    if exclude is not None and len(exclude):
        order = order[~np.isin(order, np.asarray(exclude))]
    return order[:size]


def run_validation_rows(seed: int, n: int, size: int, sources: np.ndarray,
                        pool: np.ndarray | None = None) -> np.ndarray | None:
    """The sorted (size,) training rows a distillation run of `seed` holds out of the real data it
    reads and judges its set on (`--val-size`; None for 0): none of its `sources`, drawn with a key
    of their own, so the run's start and steps stay as without them. pool: draw them from these
    rows only (MTT: the rows its experts never trained on); fewer when sources fall among them."""
    if not size:
        return None
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
    if pool is not None:
        if size > len(pool):
            raise InputError(f"--val-size must be at most the {len(pool)} training images the experts held out, got {size}")
        order = np.asarray(pool)[np.asarray(jax.random.permutation(key, len(pool)))]
        return np.sort(order[~np.isin(order, np.asarray(sources))][:size])
    if size > n // 5:
        raise InputError(f"--val-size must be at most a fifth of the {n} training images ({n // 5}), got {size}")
    return np.sort(validation_split(key, n, size, np.asarray(sources)))
