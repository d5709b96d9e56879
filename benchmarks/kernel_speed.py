"""Seconds per kernel entry, this project against neural-tangents 0.6.5, in one run.

FC1, ConvNet3 and ConvNet NTKs on 28x28x1 and 32x32x3 inputs, float64 and float32, forward
and forward+gradient (value and gradient w.r.t. x1, as KIP needs), peak memory by XLA's own accounting of each
compiled program, and the largest difference between the two implementations' kernels on the
same inputs. The reference runs in its side environment as a separate process, one
configuration at a time, never concurrently with ours. Also: the machine's matmul peak, the
fraction of it the ConvNet kernels reach, and where their time goes (an XLA profile).
Writes results/kernel_speed.{md,json}.

    python -m benchmarks.kernel_speed
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.timing import best_seconds
from kip import kernels, report

CONFIGS = [  # kernel, image shape, n1, n2
    ("fc1", (28, 28, 1), 100, 1000),
    ("fc1", (32, 32, 3), 100, 1000),
    ("convnet3", (28, 28, 1), 2, 4),
    ("convnet3", (32, 32, 3), 2, 4),
    ("convnet", (28, 28, 1), 2, 4),
    ("convnet", (32, 32, 3), 2, 4),
]


def measure(kernel: str, shape, n1: int, n2: int, dtype: str, seed: int = 0, repeats: int = 2) -> tuple[dict, np.ndarray]:
    """Ours, on the inputs the reference draws (numpy RandomState(seed))."""
    dt = {"float32": jnp.float32, "float64": jnp.float64}[dtype]
    rng = np.random.RandomState(seed)
    x1, x2 = jnp.asarray(rng.randn(n1, *shape), dt), jnp.asarray(rng.randn(n2, *shape), dt)
    w = jnp.asarray(rng.randn(n1, n2), dt)
    kernel_fn = functools.partial(kernels.preset(kernel).kernel_fn, get="ntk")
    programs = {
        "forward": jax.jit(kernel_fn),
        # KIP needs the loss and its gradient: value_and_grad. (A gradient alone lets XLA drop
        # the forward values, which no KIP step can.)
        "forward_grad": jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(w * kernel_fn(a, b)))),
    }
    out = {"impl": "kip", "kernel": kernel, "shape": list(shape), "dtype": dtype, "n1": n1, "n2": n2}
    forward = None
    for name, fn in programs.items():
        compiled = fn.lower(x1, x2).compile()
        mem = compiled.memory_analysis()
        out[f"{name}_peak_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
        result = jax.block_until_ready(fn(x1, x2))
        out[f"{name}_s_per_entry"] = best_seconds(lambda: jax.block_until_ready(fn(x1, x2)), repeats) / (n1 * n2)
        if name == "forward":
            forward = np.asarray(result)
    return out, forward


def matmul_peak(dtype, n: int = 2048) -> float:
    """GFLOP/s of a large matrix product: the machine's practical arithmetic peak."""
    a = jnp.asarray(np.random.RandomState(0).randn(n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    return 2 * n**3 / best_seconds(lambda: jax.block_until_ready(f(a)), min_runs=5, min_total=0) / 1e9


def one_pair_gflops(kernel: str, shape, dtype) -> tuple[float, float]:
    """(XLA's flop count, GFLOP/s) for one pair of images with both images' own passes:
    with n1 = n2 = 1 every loop runs once, so the count is the whole computation."""
    rng = np.random.RandomState(1)
    x1, x2 = (jnp.asarray(rng.randn(1, *shape), dtype) for _ in range(2))
    f = jax.jit(functools.partial(kernels.preset(kernel).kernel_fn, get="ntk"))
    flops = f.lower(x1, x2).compile().cost_analysis()["flops"]
    jax.block_until_ready(f(x1, x2))
    return flops, flops / best_seconds(lambda: jax.block_until_ready(f(x1, x2)), min_runs=3, min_total=0) / 1e9


def profile(kernel: str, shape, n1: int, n2: int) -> list[dict]:
    """Top operations of our forward program by time, from an XLA profile (in a child
    process: the tracing flag must be set before JAX starts, and it is kept out of the timings)."""
    code = f"""
import functools, glob, gzip, json, collections, re, sys, jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_enable_x64', True)
from kip import kernels
f = jax.jit(functools.partial(kernels.preset({kernel!r}).kernel_fn, get='ntk'))
rng = np.random.RandomState(0)
x1, x2 = jnp.asarray(rng.randn({n1}, *{tuple(shape)})), jnp.asarray(rng.randn({n2}, *{tuple(shape)}))
jax.block_until_ready(f(x1, x2))
with jax.profiler.trace(sys.argv[1], create_perfetto_trace=True):
    jax.block_until_ready(f(x1, x2))
hlo = f.lower(x1, x2).compile().as_text()
print(json.dumps(hlo))
"""
    with tempfile.TemporaryDirectory() as trace_dir:
        env = {**os.environ, "XLA_FLAGS": "--xla_cpu_enable_xprof_traceme=true"}
        proc = subprocess.run([sys.executable, "-c", code, trace_dir], capture_output=True, text=True, env=env,
                              cwd=report.ROOT)
        if proc.returncode != 0:
            return [{"error": proc.stderr[-500:]}]
        hlo = json.loads(proc.stdout.strip().splitlines()[-1])
        events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    ops = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "while", "Slinky", "Pjit", "Common")):
            ops[e["name"]] += e.get("dur", 0)
    total = sum(ops.values())
    rows = []
    for name, dur in ops.most_common(8):
        line = next((ln for ln in hlo.splitlines() if re.search(rf"%{re.escape(name)} = ", ln)), "")
        shape_text = line.split("=", 1)[1].strip().split(" ")[0] if line else ""
        where = re.search(r'op_name="([^"]*)"', line)
        rows.append({"op": name, "share": dur / total, "ms": dur / 1e3, "shape": shape_text,
                     "source": where.group(1).split("/")[-1] if where else ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nt-python", default=common.default_nt_python())
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--only", nargs="*", default=None, help="kernel names to run (default: all)")
    args = report.parse_args(parser)
    jax.config.update("jax_enable_x64", True)

    rows = []
    for kernel, shape, n1, n2 in CONFIGS:
        if args.only and kernel not in args.only:
            continue
        for dtype in args.dtypes:
            with tempfile.NamedTemporaryFile(suffix=".npy") as saved:
                ref = common.run_nt(args.nt_python, "kernel-speed", "--kernel", kernel, "--shape", *map(str, shape),
                                    "--dtype", dtype, "--n1", str(n1), "--n2", str(n2), "--save", saved.name)
                ref_kernel = np.load(saved.name) if ref else None
            ours, our_kernel = measure(kernel, shape, n1, n2, dtype)
            row = {"ours": ours, "reference": ref[0] if ref else None}
            if ref_kernel is not None:
                row["max_rel_diff"] = float(np.max(np.abs(our_kernel - ref_kernel)) / np.max(np.abs(ref_kernel)))
            rows.append(row)
            print(json.dumps(row), flush=True)

    peaks = {d: matmul_peak({"float32": jnp.float32, "float64": jnp.float64}[d]) for d in args.dtypes}
    efficiency = []
    for kernel in ("convnet3", "convnet"):
        if args.only and kernel not in args.only:
            continue
        for shape in ((28, 28, 1), (32, 32, 3)):
            flops, gflops = one_pair_gflops(kernel, shape, jnp.float64)
            efficiency.append({"kernel": kernel, "shape": list(shape), "flops_one_pair": flops, "gflops": gflops,
                               "fraction_of_f64_matmul_peak": gflops / peaks.get("float64", float("nan"))})
    where = profile("convnet3", (32, 32, 3), 2, 4) if not args.only or "convnet3" in args.only else []

    def ms(x):
        return f"{1e3 * x:.3g}" if x is not None else "-"

    lines = ["| kernel | input | dtype | forward ms/entry: kip / NT | speed-up | fwd+grad ms/entry: kip / NT | speed-up "
             "| peak MB fwd+grad: kip / NT | max rel. diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, n = r["ours"], r["reference"] or {}

        def cells(key):
            ours, ref = o[f"{key}_s_per_entry"], n.get(f"{key}_s_per_entry")
            return f"{ms(ours)} / {ms(ref)}", f"{ref / ours:.1f}x" if ref else "-"

        fwd, fwd_ratio = cells("forward")
        grad, grad_ratio = cells("forward_grad")
        mem = f"{o['forward_grad_peak_bytes'] / 2**20:.0f} / " + (
            f"{n['forward_grad_peak_bytes'] / 2**20:.0f}" if n else "-")
        diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-"
        lines.append(f"| {o['kernel']} | {'x'.join(map(str, o['shape']))} ({o['n1']}x{o['n2']}) | {o['dtype']} | "
                     f"{fwd} | {fwd_ratio} | {grad} | {grad_ratio} | {mem} | {diff} |")
    body = "\n".join(lines)
    body += "\n\nMatrix-product peak of this machine (2048^3, jit): " + ", ".join(
        f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items())
    if efficiency:
        body += "\n\n| kernel | input | XLA flops, one pair (both self passes) | GFLOP/s | fraction of float64 matmul peak |\n|---|---|---|---|---|\n"
        body += "\n".join(f"| {e['kernel']} | {'x'.join(map(str, e['shape']))} | {e['flops_one_pair'] / 1e6:.0f} M | "
                          f"{e['gflops']:.1f} | {100 * e['fraction_of_f64_matmul_peak']:.0f}% |" for e in efficiency)
    if where:
        body += ("\n\nWhere the time goes (ConvNet3, 32x32x3, float64, forward, 2x4 entries; share of time in XLA "
                 "operations):\n\n| op | share | shape | from |\n|---|---|---|---|\n")
        body += "\n".join(f"| {w.get('op')} | {100 * w.get('share', 0):.0f}% | `{w.get('shape')}` | {w.get('source')} |"
                          for w in where)
    body += """

Per entry = the program's time divided by n1*n2 (both images' own passes included). "fwd+grad" is
the value and gradient of sum(w * K(x1, x2)) w.r.t. x1 (`jax.value_and_grad`), KIP's use (runs of
this file up to commit 2f3983d timed the gradient alone, for which XLA drops the forward values).
Peak memory is XLA's accounting of the compiled program (arguments + outputs + scratch). max rel. diff = max |K_kip - K_NT| / max |K_NT|
on identical inputs. The reference: neural-tangents 0.6.5 on JAX 0.5.3 in its side environment,
same machine, run one configuration at a time between ours.
"""
    report.write_results("kernel_speed", "Kernel speed: kip vs neural-tangents (NTK, seconds per entry)", body,
                         {"rows": rows, "matmul_peak_gflops": peaks, "efficiency": efficiency, "profile": where}, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
