"""Data parallelism on 4 forced host devices (a subprocess: XLA_FLAGS must be set before jax
loads): KIP loss and gradients, Label Solve and test accuracy equal one device's, the rows really
are split between devices, and `kip distill --devices N` says how many it uses."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import forced_devices_flags

from kip import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from kip import distill, kernels, krr, parallel
    assert len(jax.devices()) == 4, jax.devices()
    mesh = parallel.make_mesh()
    x = jax.random.normal(jax.random.PRNGKey(0), (48, 8, 8, 1), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(48) % 10, 10, dtype=jnp.float64) - 0.1
    x_s, y_s, x_t, y_t = x[:6], y[:6], x[6:], y[6:]  # 42 targets: not a multiple of 4 (padding)
    seen = []  # rows of x2 each kernel call sees, at trace time

    def recording(kfn):
        def k(x1, x2=None, **kw):
            seen.append(None if x2 is None else x2.shape[0])
            return kfn(x1, x2, **kw)
        return k

    out = {}
    # (name, kernel, losses, rtol): float32 random features differ in the last bits between
    # batch shapes (XLA's conv blocking), hence the looser tolerance there.
    for name, kfn, losses, rtol in [
            ("fc1", lambda a, b=None, **kw: kernels.preset("fc1").kernel_fn(a, b, "ntk", **kw), ("mse", "platt"), 1e-10),
            ("convnet3", lambda a, b=None, **kw: kernels.preset("convnet3").kernel_fn(a, b, "ntk", **kw), ("mse",), 1e-10),
            ("rf-convnet3", kernels.random_features("convnet3", 2, 16, jax.random.PRNGKey(1)), ("mse", "platt"), 1e-5)]:
        if name not in sys.argv[1:]:
            continue
        params = {"images": x_s, "labels": y_s, "log_temperature": jnp.asarray(1.0)}
        for loss in losses:
            res = {}
            for m in (None, mesh):
                seen.clear()
                f = jax.jit(jax.value_and_grad(lambda p: distill.kip_loss(recording(kfn), p, x_t, y_t, 1e-4, True,
                                                                          loss=loss, mesh=m), has_aux=True))
                (value, acc), grads = f(parallel.replicate(m, params))
                res[m is None] = (value, acc, grads, list(seen))
            one, four = res[True], res[False]
            np.testing.assert_allclose(four[0], one[0], rtol=rtol, err_msg=name)
            assert four[1] == one[1]
            for k in params:
                scale = float(jnp.max(jnp.abs(one[2][k])))
                np.testing.assert_allclose(four[2][k], one[2][k], rtol=100 * rtol, atol=100 * rtol * scale, err_msg=name)
            assert 42 in one[3] and 11 in four[3] and 42 not in four[3], (one[3], four[3])  # 44 padded rows / 4
        ls = [jax.jit(lambda m=m: distill.label_solve(kfn, x_s, x_t, y_t, 1e-4, block_size=4, mesh=m))()
              for m in (None, mesh)]
        np.testing.assert_allclose(ls[1], ls[0], rtol=100 * rtol, atol=100 * rtol * float(jnp.max(jnp.abs(ls[0]))))
        labels = jnp.argmax(y_t, 1)
        w, xt4, lab4, yt4 = parallel.split_rows(mesh, jnp.ones(42), x_t, labels, y_t)
        assert len(xt4.addressable_shards) == 4 and xt4.sharding.shard_shape(xt4.shape)[0] == 11
        assert {s.index[0].start for s in xt4.addressable_shards} == {0, 11, 22, 33}
        one = jax.jit(lambda: krr.test_metrics(kfn, x_s, y_s, x_t, labels, y_t, 1e-4, 5))()
        four = jax.jit(lambda: krr.test_metrics(kfn, x_s, y_s, xt4, lab4, yt4, 1e-4, 5, mesh, w))()
        np.testing.assert_allclose(four, one, rtol=rtol)
        out[name] = float(one[0])
    print(json.dumps(out))
""")


def _run(args, timeout=600):
    env = {**os.environ, "XLA_FLAGS": forced_devices_flags(4),
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# the row split is the kernel-agnostic engine's (kip.parallel): fc1 checks it in CI; the float32
# random-feature and exact conv kernels (~35 s and minutes to compile) are slow
@pytest.mark.parametrize("kernels", [["fc1"], pytest.param(["rf-convnet3"], marks=pytest.mark.slow),
                                     pytest.param(["convnet3"], marks=pytest.mark.slow)])
def test_four_devices_give_one_devices_loss_grads_labels_and_accuracy(kernels):
    accuracies = json.loads(_run(["-c", SCRIPT, *kernels]).strip().splitlines()[-1])
    assert set(accuracies) == set(kernels)


def test_distill_devices_flag_splits_and_matches_one_device(tmp_path):
    common = ["-m", "kip.cli", "distill", "--ipc", "2", "--steps", "10", "--eval-every", "5", "--target-batch", "102",
              "--no-progress"]
    lines = {n: _run([*common, "--devices", str(n), "--out", str(tmp_path / str(n))]) for n in (1, 4)}
    assert "using 4 of 4 devices (cpu)" in lines[4] and "using 1 of 4 devices (cpu)" in lines[1]
    metrics = {n: json.loads((tmp_path / str(n) / "metrics.json").read_text()) for n in (1, 4)}
    assert metrics[4]["test_accuracy"] == metrics[1]["test_accuracy"]
    losses = [[row[1] for row in metrics[n]["losses"]] for n in (1, 4)]
    assert max(abs(a - b) / abs(a) for a, b in zip(*losses)) < 1e-9


def test_devices_out_of_range_is_an_input_error():
    with pytest.raises(ValueError, match="--devices must be between 1 and"):
        parallel.make_mesh(0)


MULTI_PROCESS = textwrap.dedent("""
    import sys, jax
    port, process, processes = sys.argv[1:4]
    if int(processes) > 1:
        jax.distributed.initialize(f"localhost:{port}", num_processes=int(processes), process_id=int(process))
    from kip import cli
    sys.exit(cli.main(sys.argv[4:]))
""")


def test_two_processes_of_two_devices_give_one_process_of_four_devices_run(tmp_path):
    """Multi-host with no code change: `jax.distributed.initialize` (two local processes, two host
    devices each, gloo collectives between them) and the same `kip distill` as one process with
    four devices: every process ends with that run's images, labels, losses and accuracy."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    common = ["distill", "--ipc", "2", "--steps", "6", "--eval-every", "3", "--target-batch", "102", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def launch(process: int, processes: int, devices: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", MULTI_PROCESS, str(port), str(process), str(processes), *common,
             "--out", str(tmp_path / f"{processes}-{process}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**env, "XLA_FLAGS": forced_devices_flags(devices)})

    procs = [launch(0, 2, 2), launch(1, 2, 2)]
    single = launch(0, 1, 4)
    for p in [*procs, single]:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        assert "using 4 of 4 devices (cpu)" in out + err
    reference = np.load(tmp_path / "1-0" / "distilled.npz")
    ref_metrics = json.loads((tmp_path / "1-0" / "metrics.json").read_text())
    for process in (0, 1):
        got = np.load(tmp_path / f"2-{process}" / "distilled.npz")
        for key in ("images", "labels"):
            np.testing.assert_allclose(got[key], reference[key], rtol=1e-9, atol=1e-12)
        metrics = json.loads((tmp_path / f"2-{process}" / "metrics.json").read_text())
        assert metrics["test_accuracy"] == ref_metrics["test_accuracy"]
        assert metrics["environment"]["device"].startswith("4 x cpu")
        np.testing.assert_allclose([r[1] for r in metrics["losses"]], [r[1] for r in ref_metrics["losses"]], rtol=1e-9)
