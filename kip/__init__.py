"""kip: dataset distillation and data pruning with infinite-width kernels, in JAX.

Pipeline: `kip.data` -> `kip.preprocess` -> `kip.kernels` -> `kip.krr` -> `kip.distill`.
"""

import os

# jaxlib's CPU LAPACK (Cholesky, triangular solves) calls scipy's OpenBLAS, whose worker
# threads busy-wait after each call and starve XLA's own threads: on 2 cores a KIP step ran
# 1.5x slower. Our LAPACK calls are small, so one thread loses nothing. Must be set before
# scipy's OpenBLAS loads; a value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"


class InputError(ValueError):
    """Bad user input (file, shape, label, option): the CLI prints it in one line and exits 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (a distillation keeps its last good checkpoint)."""
