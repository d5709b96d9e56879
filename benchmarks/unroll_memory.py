"""Memory of the unrolled methods' steps: DD (`kip.unrolled.make_step`) and MTT
(`kip.unrolled.make_mtt_step`) unrolling 50 gradient steps of the dc protocol's ConvNet at width
128 on 10 synthetic MNIST-shaped images (1 per class), each step rematerialised in the backward
pass (`jax.checkpoint` inside `unroll_sgd`); beside them the same unroll without
rematerialisation, as the straightforward code would store it. Goal: under 2 GB.

XLA's own accounting of each compiled step (`compiled.memory_analysis()`: the temporaries it
allocates, and its inputs: the real training set for DD, the experts' parameters for MTT) and,
after the steps ran, the process's peak resident memory. The data are random arrays of MNIST's
shapes (memory does not depend on the values). Writes results/unroll_memory.{md,json}.

    python -m benchmarks.unroll_memory
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import resource
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from kip import distill, method_run, report, unrolled

GB = 1024**3


def _analysis(jitted, *args) -> dict:
    compiled = jitted.lower(*args).compile()
    m = compiled.memory_analysis()
    return {"temp_gb": m.temp_size_in_bytes / GB, "inputs_gb": m.argument_size_in_bytes / GB,
            "outputs_gb": m.output_size_in_bytes / GB}


def _no_remat(fn):
    return fn


def measure(method: str, steps: int, width: int, remat: bool, train_size: int) -> dict:
    model, _, width = method_run.networks(width, 10)
    key = jax.random.PRNGKey(0)
    images = jax.random.normal(key, (10, 28, 28, 1), jnp.float32)
    patch = mock.patch.object(jax, "checkpoint", jax.checkpoint if remat else _no_remat)
    with patch:
        if method == "dd":
            settings = unrolled.Settings(1, 10, real_batch=64, unroll=1, epochs=steps)
            optimizer = unrolled.image_optimizer()
            state = unrolled.init_state(images, settings, optimizer, key)
            x = jax.random.normal(key, (train_size, 28, 28, 1), jnp.float32)
            data = distill.train_data(x, np.arange(train_size) % 10, 10, jnp.float32)
            step = jax.jit(unrolled.make_step(settings, model, optimizer))
        else:
            flat, unravel = ravel_pytree(model.init(key, images[:1])["params"])
            data = jnp.stack([flat, flat * 0.99, flat * 0.98, flat * 0.97])[None]  # one expert, 3 epochs
            settings = unrolled.MttSettings(1, 10, syn_steps=steps, expert_epochs=2, max_start_epoch=1,
                                            strategy="color_crop_cutout_scale_rotate")
            optimizer = unrolled.mtt_optimizer()
            state = unrolled.init_mtt_state(images, 0.01, optimizer, key)
            step = jax.jit(unrolled.make_mtt_step(settings, model, unravel, optimizer))
        row = _analysis(step, state, data)
        for _ in range(2):
            state, metrics = step(state, data)
        jax.block_until_ready(metrics["loss"])
    return {"method": method, "steps": steps, "width": width, "remat": remat, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=60000, help="DD's real training set (MNIST: 60000)")
    parser.add_argument("--name", default="unroll_memory")
    parser.add_argument("--results-dir", default=report.RESULTS)
    args = report.parse_args(parser)
    rows = []
    for method in ("dd", "mtt"):
        for remat in (True, False):
            rows.append(measure(method, args.steps, args.width, remat, args.train_size))
            print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    lines = ["| method | unrolled steps | width | each step rematerialised | XLA temporaries | inputs (data, state) "
             "| temporaries + inputs + outputs | goal < 2 GB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        total = r["temp_gb"] + r["inputs_gb"] + r["outputs_gb"]
        lines.append(f"| {r['method'].upper()} | {r['steps']} | {r['width']} | {'yes (kip)' if r['remat'] else 'no'} | "
                     f"{r['temp_gb']:.3f} GB | {r['inputs_gb']:.3f} GB | {total:.3f} GB | "
                     f"{'met' if total < 2 else 'not met'} |")
    env = report.machine()
    body = "\n".join(lines) + f"""

One jitted step of each method (10 synthetic 28x28x1 images, 1 per class; the dc protocol's
ConvNet with instance norm at width {args.width}, convolutions as patch matmuls on CPU as the runs
use them), as XLA compiled it on {env['device']}: "temporaries" is the memory the step allocates
for itself (activations, the unroll's saved parameters, gradients), "inputs" what it reads (DD:
the real training set of {args.train_size} images on the device and the state; MTT: one expert's
4 parameter vectors and the state). DD: {args.steps} full-batch steps (unroll 1 x {args.steps}
epochs), 64 real images per class for the outer loss. MTT: {args.steps} synthetic steps with DSA
augmentation. "no": the same unroll with `jax.checkpoint` removed (every step's activations
kept for the backward pass). The process's peak resident memory after all {len(rows)} programs
ran: {peak:.2f} GB.
"""
    report.write_results(args.name, "Memory of the unrolled steps (DD, MTT)", body,
                         {"rows": rows, "peak_rss_gb": peak, "args": {k: v for k, v in vars(args).items() if k != "provenance"}},
                         results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
