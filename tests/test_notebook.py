"""The library as a notebook meets it: a fresh Python process with JAX's x64 mode off and nothing
imported first. Importing and using kip must leave JAX's configuration, matplotlib's backend and
the environment as they were; its float32 paths (kernels, random features, ridge solves) must
agree with a float64 numpy reference within the tolerance the README states."""

import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SET_BY_ENTRY_POINTS = ("OPENBLAS_NUM_THREADS", "TF_CPP_MIN_LOG_LEVEL", "JAX_ENABLE_X64", "MPLBACKEND")


THIRD_PARTY = "jax, optax, flax.linen, dm_pix, sklearn.datasets, scipy.stats, matplotlib.figure, tqdm"
ENV_SNAPSHOT = """import os
env_before = dict(os.environ)
def changed_environment(before):
    return {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
"""


def readme_library_example() -> str:
    """The first python block of the README's Library section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("\n## Library\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_fresh(code: str) -> str:
    """Runs `code` in a new interpreter whose environment has none of the variables kip's entry
    points set (the test process has them) and a non-default matplotlib backend, 'svg'; returns stdout."""
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_ENTRY_POINTS}
    env["MPLBACKEND"] = "svg"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_readme_library_example_runs_in_a_fresh_notebook_and_changes_no_global_state(tmp_path):
    checks = textwrap.dedent(f"""
        import importlib, numpy as np
        for module in ("kip.run", "kip.diet", "kip.sweep", "kip.plots", "kip.transfer", "kip.protocols", "kip.release",
                       "kip.train", "kip.models", "kip.scores", "kip.augment", "kip.report", "kip.io"):
            importlib.import_module(module)
        from kip import plots
        plots.learning_curve({str(tmp_path / 'curve.png')!r}, [[0, 1.0], [1, 0.5]], [{{"step": 1, "test_accuracy": 0.5}}], "t")
        import matplotlib, sys
        assert not jax.config.jax_enable_x64, "x64 was turned on"
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules, "pyplot (global figure state) was imported"
        print(sorted(changed_environment(env_before)))
        print("OK", pred.dtype, pred_kip.dtype)
    """)
    out = run_fresh(ENV_SNAPSHOT + readme_library_example() + checks)
    # JAX and scikit-learn set a few variables of their own on import: only kip's would be a defect.
    third_party = run_fresh(ENV_SNAPSHOT + f"import {THIRD_PARTY}\nprint(sorted(changed_environment(env_before)))")
    assert set(eval(out.splitlines()[-2])) <= set(eval(third_party.splitlines()[-1])), (out, third_party)
    accuracies = eval(out.splitlines()[-3])  # the README's own print: {'fc1': ..., 'rf': ..., 'kip': ...}
    assert out.splitlines()[-1] == "OK float32 float32"
    assert min(accuracies.values()) > 0.85, accuracies  # digits, 100 support images: KRR ~0.9, KIP above
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_float32_kernels_and_solves_with_x64_off_agree_with_float64_numpy():
    """The README's tolerance: float32 KRR predictions within cond(K_ss) * 6e-8 (float32's
    epsilon) of a float64 numpy solve of the same kernel, relative to the largest prediction."""
    code = textwrap.dedent("""
        import functools, jax, numpy as np
        from kip import InputError, data, kernels, krr, preprocess, run
        assert not jax.config.jax_enable_x64
        eps = float(np.finfo(np.float32).eps)
        ds = data.load("digits")
        prep = preprocess.fit(ds.x_train)
        xs, xt = prep.apply(ds.x_train[:60]).astype(np.float32), prep.apply(ds.x_test[:100]).astype(np.float32)
        ys = np.asarray(data.one_hot(ds.y_train[:60], 10), np.float64)

        def reference(kss, kts):
            n = len(kss)
            return kts @ np.linalg.solve(kss + krr.DEFAULT_REG * np.trace(kss) / n * np.eye(n), ys), np.linalg.cond(kss)

        rf = kernels.random_features("convnet3", n_models=4, width=128, key=jax.random.PRNGKey(0))
        f_s, f_t = (np.asarray(rf.features(x), np.float64) for x in (xs, xt))
        gram = np.asarray(rf(xs, xt))
        assert gram.dtype == np.float32
        assert np.abs(gram - f_s @ f_t.T).max() <= 10 * eps * np.abs(f_s @ f_t.T).max()
        kernel_pairs = {"rf": (rf, f_s @ f_s.T, f_t @ f_s.T)}
        ntk = functools.partial(kernels.preset("fc1", num_classes=10).kernel_fn, get="ntk")
        kernel_pairs["fc1"] = (ntk, np.asarray(ntk(xs, None), np.float64), np.asarray(ntk(xt, xs), np.float64))
        for name, (kernel_fn, kss, kts) in kernel_pairs.items():
            pred = np.asarray(krr.predict(kernel_fn, xs, ys.astype(np.float32), xt))
            assert pred.dtype == np.float32, pred.dtype
            ref, cond = reference(kss, kts)
            error = np.abs(pred - ref).max() / np.abs(ref).max()
            assert error <= cond * eps, (name, error, cond * eps)
            print(name, error, cond * eps)
        assert run.dtype_for("float32") == np.float32
        try:
            run.dtype_for("float64")
            raise AssertionError("float64 without x64 must be refused")
        except InputError as e:
            assert "jax_enable_x64" in str(e) and "\\n" not in str(e), e
        print("OK")
    """)
    assert run_fresh(code).splitlines()[-1] == "OK"


def test_the_command_line_module_sets_its_thread_default_before_numpy_loads():
    """The converse: `kip.cli` is an entry point; importing it sets one OpenBLAS thread (the KIP
    step ran 1.5x slower on 2 cores without it) before numpy loads, a value the user set winning."""
    code = "import sys, os\nimport kip.cli\nprint(os.environ.get('OPENBLAS_NUM_THREADS'), 'numpy' in sys.modules)"
    assert run_fresh(code).splitlines()[-1] == "1 True"
