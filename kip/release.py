"""Distilled sets as files: ours (images, labels, the preprocessing of their space, the training
images they started from, the kernel), the KIP authors' release format, and other codebases'
(channel-first arrays, extra keys, labels as class indices or score rows, a preprocessing the
user states); and `export`, which writes a set channel-first for PyTorch tools."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from kip import InputError, data, io, preprocess

LAYOUTS = ("auto", "nhwc", "nchw")


def load_distilled(path: str, image_shape: tuple[int, ...], num_classes: int, layout: str = "auto"
                   ) -> tuple[np.ndarray, np.ndarray, preprocess.Preprocessing | None]:
    """Reads a distilled set: ours, the authors' release (`images`, `labels`), or another
    codebase's (channel-first images, extra keys, labels as class indices or score rows).

    layout: 'nhwc', 'nchw' (PyTorch), or 'auto' (channel-first when the images' shape says so).
    Returns images (n, H, W, C), labels (n, C) (class indices become centred one-hot rows), and
    the stored preprocessing (None when the file has none).
    """
    return _parse_distilled(io.read_npz(path), path, image_shape, num_classes, layout)


def _parse_distilled(arrays: dict, path: str, image_shape: tuple[int, ...], num_classes: int, layout: str = "auto"):
    """`load_distilled` on the arrays already read from `path` (named in errors)."""
    if layout not in LAYOUTS:
        raise InputError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    for key in ("images", "labels"):
        if key not in arrays:
            raise InputError(f"{path}: missing key {key!r} (a distilled set has 'images' and 'labels')")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 3 and len(image_shape) == 3 and image_shape[-1] == 1:
        images = images[..., None]
    h, w, c = image_shape if len(image_shape) == 3 else (None, None, None)
    channel_first = images.ndim == 4 and tuple(images.shape[1:]) == (c, h, w)
    if layout == "nchw" or (layout == "auto" and channel_first and tuple(images.shape[1:]) != tuple(image_shape)):
        if not channel_first:
            raise InputError(f"{path}: --layout nchw, but the images are {images.shape[1:]}, not {(c, h, w)}")
        images = np.transpose(images, (0, 2, 3, 1))
    if images.ndim < 2 or tuple(images.shape[1:]) != tuple(image_shape):
        raise InputError(f"{path}: images are {images.shape[1:]} but the data set's images are {tuple(image_shape)}"
                         f" (or {(c, h, w)} channel-first)")
    if len(images) == 0:
        raise InputError(f"{path}: the distilled set is empty")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        if not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0 or labels.max() >= num_classes:
            raise InputError(f"{path}: integer labels must lie in 0..{num_classes - 1}")
        # centred one-hot rows, as data.one_hot; in numpy: float64 whether or not JAX's x64 mode is on
        labels = np.eye(num_classes)[labels.astype(np.int64)] - 1.0 / num_classes
    if labels.shape != (len(images), num_classes):
        raise InputError(f"{path}: labels have shape {labels.shape}, need ({len(images)}, {num_classes})")
    if not (np.all(np.isfinite(images)) and np.all(np.isfinite(labels))):
        raise InputError(f"{path}: contains NaN or inf")
    return images, labels, preprocess.Preprocessing.from_arrays(arrays)


class StoredSet(NamedTuple):
    """A distilled set as its file holds it."""

    images: np.ndarray  # (n, H, W, C)
    labels: np.ndarray  # (n, C)
    preprocessing: preprocess.Preprocessing | None  # of the set's space; None when the file has none
    sources: np.ndarray  # (n,) int64 training images the set started from; -1 where unknown
    val_indices: np.ndarray | None  # training images its run held out for validation; None if none
    kernel: str | None  # the kernel it was distilled with, when the file (or its metrics.json) says


def read_set(path: str, image_shape: tuple[int, ...], num_classes: int, layout: str = "auto") -> StoredSet:
    """`load_distilled` with what else the file records: the set's sources, its run's validation
    images and its kernel."""
    arrays = io.read_npz(path)
    images, labels, prep = _parse_distilled(arrays, path, image_shape, num_classes, layout)
    stored, val = arrays.get("initial_indices"), arrays.get("val_indices")
    sources = np.asarray(stored, np.int64) if stored is not None and np.shape(stored) == (len(images),) \
        else np.full(len(images), -1, np.int64)
    kernel = str(arrays["kernel"]) if "kernel" in arrays else _kernel_beside(path)
    return StoredSet(images, labels, prep, sources, None if val is None else np.asarray(val), kernel)


class LoadedSet(NamedTuple):
    """A distilled set read for a data set, with the preprocessing of its space."""

    dataset: data.Dataset
    images: np.ndarray  # (n, H, W, C), in the preprocessed space
    labels: np.ndarray  # (n, C)
    preprocessing: preprocess.Preprocessing  # maps real images into the set's space
    note: str  # where the preprocessing came from
    sources: np.ndarray  # (n,) training images the set started from; -1 where unknown
    kernel: str | None  # the kernel it was distilled with, when the file says
    val_indices: np.ndarray | None = None  # training images its run held out for validation; None if none


def load_distilled_for(distilled: str, dataset: str, data_dir: str | None, recipe: str | None = None,
                       zca_strength: float = preprocess.ZCA_STRENGTH, layout: str = "auto") -> LoadedSet:
    """The data set and a distilled set read for it (see `load_distilled`), with the preprocessing
    that maps real images into the set's space: the file's own, or for a file without one the
    stated `recipe` (`preprocess.RECIPES`; default 'standardize') fitted on the training images."""
    ds = data.load(dataset, data_dir)
    images, labels, prep, sources, val, kernel = read_set(distilled, ds.image_shape, ds.num_classes, layout)
    if prep is not None:
        if recipe is not None and recipe != prep.recipe:
            raise InputError(f"{distilled} records its own preprocessing ({prep.recipe}); --preprocess is for sets without one")
        return LoadedSet(ds, images, labels, prep, "from file", sources, kernel, val)
    recipe = recipe or "standardize"
    prep = preprocess.fit(ds.x_train, recipe, zca_strength)
    strength = f", strength {zca_strength:g}" if "zca" in recipe else ""
    return LoadedSet(ds, images, labels, prep, f"stated: {recipe}{strength}, fitted on train", sources, kernel, val)


def _kernel_beside(distilled: str) -> str | None:
    """The kernel in the metrics.json next to one of our distilled sets written before the
    set recorded it itself."""
    path = os.path.join(os.path.dirname(os.path.abspath(distilled)), "metrics.json")
    if not os.path.exists(path):
        return None
    config = io.read_json(path).get("config")
    return config.get("kernel") if isinstance(config, dict) else None


def export(distilled: str, out: str, dataset: str | None = None, data_dir: str | None = None,
           recipe: str | None = None, zca_strength: float = preprocess.ZCA_STRENGTH, layout: str = "auto") -> dict:
    """`kip export`: writes the set channel-first, for PyTorch tools that read it with numpy alone:
    `images` (n, C, H, W) float32, `labels` (n, C) float32 (as stored), `label_indices` (n,) int64
    (their argmax), and the preprocessing that maps raw images (N, C, H, W) into the set's space:
    `mean`, `std` (C,), and for ZCA `zca` (d, d) applied to each image flattened channel-last
    (H, W, C) after per-image normalisation when `zca_layer_norm`; `recipe` names it. A set
    without its own preprocessing needs the data set and the stated recipe to fit it."""
    arrays = io.read_npz(distilled)
    prep = preprocess.Preprocessing.from_arrays(arrays)
    if prep is None:
        if dataset is None:
            raise InputError(f"{distilled} records no preprocessing: pass --dataset (and --preprocess) to fit the stated one")
        loaded = load_distilled_for(distilled, dataset, data_dir, recipe, zca_strength, layout)
        images, labels, prep = loaded.images, loaded.labels, loaded.preprocessing
    else:
        if recipe is not None and recipe != prep.recipe:
            raise InputError(f"{distilled} records its own preprocessing ({prep.recipe}); --preprocess is for sets without one")
        images = np.asarray(arrays["images"])
        shape = images.shape[1:] if images.ndim == 4 else (*images.shape[1:], 1)
        images, labels, _ = _parse_distilled(arrays, distilled, shape, _num_classes(arrays["labels"]), layout)
    extra = {} if prep.zca is None else {"zca": prep.zca.astype(np.float32), "zca_layer_norm": np.array(prep.layer_norm)}
    io.write_npz(out, images=np.transpose(images, (0, 3, 1, 2)).astype(np.float32), labels=labels.astype(np.float32),
                 label_indices=np.argmax(labels, axis=1).astype(np.int64), mean=prep.mean.astype(np.float32),
                 std=prep.std.astype(np.float32), recipe=np.array(prep.recipe), layout=np.array("nchw"), **extra)
    return {"images": list(images.shape), "recipe": prep.recipe, "out": out}


def _num_classes(labels: np.ndarray) -> int:
    return int(labels.shape[1]) if labels.ndim == 2 and labels.shape[1] > 1 else int(np.max(labels)) + 1
