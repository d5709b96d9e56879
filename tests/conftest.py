"""Shared test set-up: the entry points' settings (float64 on), quick compiles and a compilation
cache for the session, and the real data sets of ../shared when present."""

import atexit
import gc
import os
import shutil
import tempfile

from kip import entry

# The suite compiles hundreds of small programs and runs most a few times: compile time is most of
# its time, and LLVM's optimisation passes most of that. Level 1 (of 3, the default) halves the
# compile-bound tests (conv derivatives 11 -> 4 s each) and leaves the compute-bound ones as fast
# (Monte-Carlo kernels, the README's KIP loop; level 0 made those 2-3x slower). XLA's own (HLO)
# passes, and so the programs' semantics, are unchanged. Subprocesses inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()
entry.configure(x64=True)  # the suite is an entry point, like the CLI: before numpy, scipy and JAX load

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests (and the experiment scripts they start as subprocesses, which inherit the variable)
# compile the same kernel programs: one persistent cache, empty at the start of each session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kip-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
# Every program, not only those that took 1 s (JAX's default): runs rebuild their jitted closures, so
# the small ones (evaluations, data moves) recompile per run. Measured on test_cli + test_matching +
# test_dd_frepo, one core, two A/B pairs: 350 / 362 s with the default, 309 / 353 s with 0.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the experiment subprocesses too
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

SHARED_DATASETS = os.environ.get(
    "KIP_SHARED_DATASETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Frees each test file's compiled programs when it ends. One pytest process compiles thousands
    of programs, each holding its own memory mappings; kept to the end they reached the kernel's
    limit (vm.max_map_count, 65530) and XLA segfaulted (CI, test_sweep). The persistent cache
    above makes a later recompile of the same program a disk read."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def shared_datasets():
    """Folder with mnist.npz etc.; skips the test (with the reason) when absent, as in a fresh clone."""
    if not os.path.exists(os.path.join(SHARED_DATASETS, "mnist.npz")):
        pytest.skip(f"real data sets not found in {SHARED_DATASETS} (set KIP_SHARED_DATASETS)")
    return SHARED_DATASETS


@pytest.fixture
def commits_during_runs(monkeypatch):
    """A git tree that moves while runs go on: every data set load stands for a commit made
    meanwhile, and `kip.report.provenance` reports the latest as 'c<N>'. Returns the counter
    ([N]): a writer that reads the tree late names a later commit than its run started from."""
    from kip import data, report

    commits = [0]
    load = data.load

    def load_then_commit(*args, **kwargs):
        commits[0] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(data, "load", load_then_commit)
    monkeypatch.setattr(report, "provenance", lambda allow_dirty=False, **_: {"commit": f"c{commits[0]}",
                                                                             "stamp": f"c{commits[0]}"})
    return commits


def forced_devices_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess that sees `devices` host devices, keeping the suite's own flags."""
    return f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
