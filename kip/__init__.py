"""kip: dataset distillation and data pruning with infinite-width kernels, in JAX.

Pipeline: `kip.data` -> `kip.preprocess` -> `kip.kernels` -> `kip.krr` -> `kip.distill`.
"""

__version__ = "0.1.0"


class InputError(ValueError):
    """Bad user input (file, shape, label, option): the CLI prints it in one line and exits 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (a distillation keeps its last good checkpoint)."""
