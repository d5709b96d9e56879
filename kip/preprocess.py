"""Preprocessing fitted on training images and saved with every distilled set: per-channel
standardisation, then optionally ZCA whitening, with (KIP's recipe) or without (RFAD's, MTT's,
FRePo's) each image's own normalisation first."""

from __future__ import annotations

import dataclasses

import numpy as np

from kip import InputError

ZCA_STRENGTH = 0.1  # the KIP/ConvNet papers' regulariser: reg = 0.1 * tr(cov) / d
RECIPES = ("standardize", "kip-zca", "zca", "none")  # see `fit`


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """x -> (x - mean) / std per channel, then (optionally) ZCA on each flattened image, after
    centring it and scaling it to unit norm when `layer_norm` (KIP's recipe).

    mean, std: (C,). zca: (d, d) whitening matrix with d = H*W*C, or None.
    """

    mean: np.ndarray
    std: np.ndarray
    zca: np.ndarray | None = None
    layer_norm: bool = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, C) raw images -> preprocessed images of the same shape (float64 math)."""
        x = np.asarray(x, np.float64)
        if x.shape[-1] != self.mean.shape[0]:
            raise InputError(f"images have {x.shape[-1]} channels but the preprocessing was fitted on {self.mean.shape[0]}")
        z = (x - self.mean) / self.std
        if self.zca is None:
            return z
        flat = z.reshape(len(z), -1)
        flat = _layer_norm(flat) if self.layer_norm else flat
        if flat.shape[1] != self.zca.shape[0]:
            raise InputError(f"images have {flat.shape[1]} features but the ZCA matrix is {self.zca.shape}")
        return (flat @ self.zca).reshape(z.shape)

    def invert_standardisation(self, z: np.ndarray) -> np.ndarray:
        """Back to the original pixel scale (exact unless ZCA was applied)."""
        return np.asarray(z, np.float64) * self.std + self.mean

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored next to a distilled set (`preprocess_*` keys)."""
        out = {"preprocess_mean": self.mean, "preprocess_std": self.std}
        if self.zca is not None:
            out["preprocess_zca"] = self.zca
            out["preprocess_layer_norm"] = np.array(self.layer_norm)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Preprocessing | None":
        """Inverse of `to_arrays`; None when the file holds no preprocessing (authors' format)."""
        if "preprocess_mean" not in arrays:
            return None
        zca = arrays["preprocess_zca"] if "preprocess_zca" in arrays else None
        layer_norm = bool(arrays["preprocess_layer_norm"]) if "preprocess_layer_norm" in arrays else True  # older files: KIP's
        return cls(np.asarray(arrays["preprocess_mean"]), np.asarray(arrays["preprocess_std"]), zca, layer_norm)

    @property
    def recipe(self) -> str:
        """Which of RECIPES this is ('none' when it is the identity)."""
        if self.zca is not None:
            return "kip-zca" if self.layer_norm else "zca"
        identity = np.all(self.mean == 0) and np.all(self.std == 1)
        return "none" if identity else "standardize"


def _layer_norm(flat: np.ndarray) -> np.ndarray:
    """Each row minus its mean, scaled to unit L2 norm."""
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norms > 0, norms, 1.0)


def fit(x_train: np.ndarray, recipe: str = "standardize", zca_strength: float = ZCA_STRENGTH) -> Preprocessing:
    """Fits a preprocessing recipe on (N, H, W, C) training images.

    'standardize': per-channel mean and std. 'kip-zca' (KIP's ConvNet recipe): then flatten,
    subtract each image's mean and scale it to unit norm, and whiten: cov = X^T X / n,
    W = U diag((s + reg)^-1/2) U^T with reg = zca_strength * tr(cov) / d. 'zca' (RFAD's recipe):
    the same whitening of the standardised images without the per-image normalisation. 'none':
    the images as they are.
    """
    if recipe not in RECIPES:
        raise InputError(f"preprocessing must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if not (np.isfinite(zca_strength) and zca_strength > 0):
        raise InputError(f"the ZCA strength must be a positive number, got {zca_strength}")
    x = np.asarray(x_train, np.float64)
    channels = x.shape[-1]
    if recipe == "none":
        return Preprocessing(np.zeros(channels), np.ones(channels))
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    std = np.where(std > 0, std, 1.0)
    if recipe == "standardize":
        return Preprocessing(mean, std)
    flat = ((x - mean) / std).reshape(len(x), -1)
    layer_norm = recipe == "kip-zca"
    flat = _layer_norm(flat) if layer_norm else flat
    cov = flat.T @ flat / len(flat)
    eigvals, eigvecs = np.linalg.eigh(cov)
    reg = zca_strength * np.trace(cov) / cov.shape[0]
    whitening = (eigvecs * (1.0 / np.sqrt(np.maximum(eigvals, 0) + reg))) @ eigvecs.T
    return Preprocessing(mean, std, whitening, layer_norm)
