"""Data parallelism over devices with JAX's own sharding: rows (target batch, test set) are split
over a 1-D `Mesh`, the support set is replicated, and sums over rows are reduced by `shard_map`'s
psum. Multi-host: call `jax.distributed.initialize()` first; `jax.devices()` then spans all hosts,
and the replicated host arrays every process loads identically are placed by `jax.device_put` as
they are (tests/test_parallel.py runs two processes against one)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kip import InputError

Array = jax.Array
AXIS = "data"  # the mesh axis rows are split over


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `devices` visible devices (None: all of them; inside
    `jax.default_device(d)`, d alone, so that `kip sweep` runs each cell on its own device)."""
    available = jax.devices()
    default = jax.config.jax_default_device
    if devices is None and default is not None:
        if isinstance(default, str):  # a platform name: its first device
            default = jax.devices(default)[0]
        return Mesh(np.array([default]), (AXIS,))
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise InputError(f"--devices must be between 1 and {len(available)} (the visible devices), got {n}")
    return Mesh(np.array(available[:n]), (AXIS,))


def describe(mesh: Mesh) -> str:
    """'using 4 of 4 devices (cpu)': the line runs print."""
    return f"using {mesh.size} of {len(jax.devices())} devices ({mesh.devices.flat[0].platform})"


def pad_rows(multiple: int, weights: Array, *rows: Array) -> tuple[Array, ...]:
    """Pads weights (n,) with zeros and each of rows (n, ...) with copies of row 0 to a multiple
    of `multiple` rows: padded rows then count for nothing in weighted sums."""
    n = weights.shape[0]
    pad = -n % multiple
    if not pad:
        return (weights, *rows)
    extend = lambda a: jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])])  # noqa: E731
    return (jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)]), *map(extend, rows))


def replicate(mesh: Mesh | None, tree: Any) -> Any:
    """A copy of `tree` on every device of the mesh (as is without one)."""
    return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, P()))


def split_rows(mesh: Mesh | None, weights: Array, *rows: Array) -> tuple[Array, ...]:
    """weights and rows padded (`pad_rows`) and placed with their rows split over the mesh's
    devices: each device holds n / devices of them (as is without a mesh)."""
    if mesh is None:
        return (weights, *rows)
    return jax.device_put(pad_rows(mesh.size, weights, *rows), NamedSharding(mesh, P(AXIS)))


def row_sums(fn: Callable[..., Any], mesh: Mesh | None, shared: Any, weights: Array, *rows: Array) -> Any:
    """fn(shared, weights, *rows) -> a pytree of weighted sums over the given rows; the same sums
    over all rows, computed with the rows split over the mesh (`shard_map`: each device sums
    its share, then a psum) and `shared` replicated. Without a mesh (or with one device),
    fn(shared, weights, *rows). Rows are padded with zero weights to a multiple of the devices.
    weights (n,), rows (n, ...)."""
    if mesh is None or mesh.size == 1:
        return fn(shared, weights, *rows)
    weights, *rows = pad_rows(mesh.size, weights, *rows)

    def local(shared, weights, *rows):
        return jax.tree_util.tree_map(lambda v: jax.lax.psum(v, AXIS), fn(shared, weights, *rows))

    specs = (P(), P(AXIS), *(P(AXIS) for _ in rows))
    # check_vma=False: the exact kernels' custom VJPs return untyped (not device-varying)
    # cotangents; gradients of `shared` are still summed over devices (tests/test_parallel.py).
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=False)(shared, weights, *rows)
