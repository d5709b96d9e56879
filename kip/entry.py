"""Process-wide settings, for entry points only.

The command line (`kip.cli`), the experiment and benchmark scripts and the test suite call
`configure` before numpy, scipy or JAX load. No other module of `kip` changes JAX's
configuration, matplotlib's backend or the environment: a notebook imports the library safely
and keeps its own settings (x64 off by default, inline figures).
"""

import os


def configure(x64: bool = False) -> None:
    """Sets, for this process, what kip's entry points run with (a value the user set wins):

    - one OpenBLAS thread: jaxlib's CPU LAPACK (Cholesky, triangular solves) calls scipy's
      OpenBLAS, whose worker threads busy-wait after each call and starve XLA's own threads
      (on 2 cores a KIP step ran 1.5x slower). Our LAPACK calls are small, so one thread loses
      nothing. OpenBLAS reads this once, when it loads: call `configure` first.
    - TensorFlow's C++ logs quiet (read when TFDS loads a data set).
    - with `x64`, JAX's 64-bit mode (`enable_x64`).
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if x64:
        enable_x64()


def enable_x64() -> None:
    """Turns on JAX's 64-bit mode for the process: kernel runs at precision float64 and their
    float64 ridge solves need it (`kip.run.dtype_for` says so when it is off)."""
    import jax

    jax.config.update("jax_enable_x64", True)
