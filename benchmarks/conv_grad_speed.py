"""Seconds per training step of a ConvNet with kip's convolution (`kip.models._conv`: on CPU its
weight gradient is one matmul of patches, `_conv_weight_tangent`) against lax's convolution
differentiated by JAX itself (XLA's weight-gradient convolution), in the three places networks
train: one jitted step (the evaluation protocols' step), steps inside a `fori_loop` (an expert
trajectory's epoch, DC's inner training; every distillation method's steps inside `lax.scan`), and
4 networks at once under vmap (`kip.train.fit_many`); and one DD step at the method zoo's
settings (its outer loss: a weight gradient inside `lax.map`). Same numbers both ways
(tests/test_models.py::test_conv_derivatives_equal_lax_convolution).

Writes results/conv_grad_speed.{md,json}.

    python -m benchmarks.conv_grad_speed                 # widths 64 and 128, batch 256
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import contextlib
from unittest import mock

import jax
import jax.numpy as jnp

from benchmarks.timing import best_seconds
from kip import method_run, models, report, trajectories, unrolled

NETWORKS = 4  # networks trained at once in the vmap case


def cases(width: int, batch: int, loop_steps: int) -> dict:
    """name -> (build: () -> a blocking callable, steps it runs); built under the convolution in force."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, 28, 28, 1))
    y = jnp.arange(batch) % 10
    model = trajectories.network(width, 10)

    def sgd(p):
        g = jax.grad(lambda q: unrolled.cross_entropy(model, q, {}, x, y))(p)
        return jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)

    net = model.init(key, x[:1])["params"]
    nets = jax.vmap(lambda k: model.init(k, x[:1])["params"])(jax.random.split(key, NETWORKS))

    def dd():
        dd_model = method_run.networks(width, 10)[0]
        settings = unrolled.Settings(ipc=1, num_classes=10, real_batch=64, unroll=1, epochs=3)
        opt = unrolled.image_optimizer()
        state = unrolled.init_state(x[:10], settings, opt, key)
        real = jax.random.normal(key, (640, 28, 28, 1))
        labels = jnp.repeat(jnp.arange(10), 64)
        variables = dd_model.init(key, x[:1])
        fn = jax.jit(jax.grad(lambda p: unrolled.dd_loss(dd_model, variables, p, settings, real, labels)))
        return lambda: jax.block_until_ready(fn(state.params))

    one, many = jax.jit(sgd), jax.jit(jax.vmap(sgd))
    loop = jax.jit(lambda p: jax.lax.fori_loop(0, loop_steps, lambda i, q: sgd(q), p))
    return {"one jitted step": (lambda: lambda: jax.block_until_ready(one(net)), 1),
            f"{loop_steps} steps in a fori_loop": (lambda: lambda: jax.block_until_ready(loop(net)), loop_steps),
            f"{NETWORKS} networks under vmap": (lambda: lambda: jax.block_until_ready(many(nets)), 1),
            "DD step (1/class, 64 real/class)": (dd, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--loop-steps", type=int, default=2)
    parser.add_argument("--name", default="conv_grad_speed")
    parser.add_argument("--results-dir", default=report.RESULTS)
    args = report.parse_args(parser)
    rows = []
    for width in args.widths:
        for name in cases(width, args.batch, args.loop_steps):
            timed = {}
            for conv, patch in (("kip", contextlib.nullcontext()), ("lax", mock.patch.object(models, "_conv", models._conv_lax))):
                with patch:  # traced and compiled with this convolution
                    build, steps = cases(width, args.batch, args.loop_steps)[name]
                    run = build()
                    run()
                timed[conv] = best_seconds(run, min_runs=1 if conv == "lax" else 2, min_total=0.0) / steps
            rows.append({"width": width, "case": name, "seconds_kip": timed["kip"], "seconds_lax": timed["lax"],
                         "speedup": timed["lax"] / timed["kip"]})
            print(f"width {width}, {name}: kip {timed['kip']:.3f} s, lax {timed['lax']:.3f} s per step "
                  f"({rows[-1]['speedup']:.1f}x)", flush=True)

    env = report.machine()
    lines = ["| width | case | lax's convolution (JAX's own weight gradient) | kip (`models._conv`) | speed-up |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['case']} | {r['seconds_lax']:.3f} s | {r['seconds_kip']:.3f} s | **{r['speedup']:.1f}x** |"
              for r in rows]
    body = "\n".join(lines) + f"""

Seconds per training step (SGD on the cross-entropy of a batch of {args.batch} MNIST-shaped images,
the mtt protocol's ConvNet: instance norm, 3 blocks) after a compiling run, on {env['device']}, {env['cpu']}
({env['cores']} cores); kip best of 2 runs, lax 1 run (it is slow). The DD row is one hypergradient
of DD's outer loss at the method zoo's CPU settings (unroll 1 x 3 epochs through im2col
convolutions, then the real batch's cross-entropy in blocks of 128 under `lax.map`), at the
width shown. XLA:CPU's weight-gradient convolution falls back to a slow kernel inside loops
(while-loop bodies) and under vmap; kip's weight tangent is a patch matmul on CPU
(`lax.platform_dependent`; other backends keep lax's convolution).
"""
    report.write_results(args.name, "Conv weight gradients on CPU: kip's patch matmul against XLA's convolution", body,
                         {"rows": rows, "args": vars(args)}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
