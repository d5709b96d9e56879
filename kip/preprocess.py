"""Preprocessing fitted on training images and saved with every distilled set:
per-channel standardisation and the KIP ZCA whitening recipe."""

from __future__ import annotations

import dataclasses

import numpy as np

from kip import InputError

ZCA_STRENGTH = 0.1  # the KIP/ConvNet papers' regulariser: reg = 0.1 * tr(cov) / d


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """x -> (x - mean) / std per channel, then (optionally) ZCA on each flattened image.

    mean, std: (C,). zca: (d, d) whitening matrix with d = H*W*C, or None.
    """

    mean: np.ndarray
    std: np.ndarray
    zca: np.ndarray | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, C) raw images -> preprocessed images of the same shape (float64 math)."""
        x = np.asarray(x, np.float64)
        if x.shape[-1] != self.mean.shape[0]:
            raise InputError(f"images have {x.shape[-1]} channels but the preprocessing was fitted on {self.mean.shape[0]}")
        z = (x - self.mean) / self.std
        if self.zca is None:
            return z
        flat = _layer_norm(z.reshape(len(z), -1))
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
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Preprocessing | None":
        """Inverse of `to_arrays`; None when the file holds no preprocessing (authors' format)."""
        if "preprocess_mean" not in arrays:
            return None
        zca = arrays["preprocess_zca"] if "preprocess_zca" in arrays else None
        return cls(np.asarray(arrays["preprocess_mean"]), np.asarray(arrays["preprocess_std"]), zca)


def _layer_norm(flat: np.ndarray) -> np.ndarray:
    """Each row minus its mean, scaled to unit L2 norm."""
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norms > 0, norms, 1.0)


def fit(x_train: np.ndarray, zca: bool = False, zca_strength: float = ZCA_STRENGTH) -> Preprocessing:
    """Fits standardisation (and ZCA) on (N, H, W, C) training images.

    ZCA (the KIP ConvNet recipe): flatten the standardised images, subtract each image's
    mean and scale it to unit norm; cov = X^T X / n; W = U diag((s + reg)^-1/2) U^T
    with reg = zca_strength * tr(cov) / d.
    """
    x = np.asarray(x_train, np.float64)
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    std = np.where(std > 0, std, 1.0)
    if not zca:
        return Preprocessing(mean, std)
    flat = _layer_norm(((x - mean) / std).reshape(len(x), -1))
    cov = flat.T @ flat / len(flat)
    eigvals, eigvecs = np.linalg.eigh(cov)
    reg = zca_strength * np.trace(cov) / cov.shape[0]
    whitening = (eigvecs * (1.0 / np.sqrt(np.maximum(eigvals, 0) + reg))) @ eigvecs.T
    return Preprocessing(mean, std, whitening)
