"""Files a run writes, each atomically (write a temporary file, then rename), so an
interruption never leaves a half-written result or checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Callable, Iterator

import numpy as np

from kip import InputError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it onto `path` on success only."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, payload: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)


def copy_atomic(source: str, path: str) -> None:
    """Copies the file `source` to `path` atomically (never a half-written `path`)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_npz(path: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buffer.getvalue())


def save_figure(path: str, fig) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def read_npz(path: str) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` (no pickles); `InputError` if missing or unreadable."""
    if not os.path.exists(path):
        raise InputError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None


def _cached_result(path: str, meta: dict) -> dict | None:
    """The arrays `cached` kept at an existing `path`, None when they were kept for other options."""
    arrays = read_npz(path)
    if "meta" in arrays and str(arrays["meta"]) == json.dumps(meta, sort_keys=True):
        return {k: v for k, v in arrays.items() if k != "meta"}
    return None


def cached_conflict(path: str, meta: dict) -> bool:
    """Whether `path` holds a `cached` result of options other than `meta` (one `cached` would
    refuse to replace without `overwrite`)."""
    return os.path.exists(path) and _cached_result(path, meta) is None


def cached(path: str, meta: dict, compute: Callable[[], dict], overwrite: bool = False) -> dict:
    """`compute()` (a dict of arrays), saved at `path` with `meta`; reused when `path` already
    holds a result of the same `meta`. A result of other options raises `InputError` unless
    `overwrite`, which recomputes it."""
    if os.path.exists(path):
        kept = _cached_result(path, meta)
        if kept is not None:
            return kept
        if not overwrite:
            raise InputError(f"{path} holds a result of other options: pass --overwrite to replace it, or another --out")
    result = compute()
    write_npz(path, meta=np.array(json.dumps(meta, sort_keys=True)), **result)
    return result
