"""S networks trained in one call against S calls one after another: `kip.train.fit_many` with the
networks vmapped into one compiled step (`vectorize=True`) against `kip.train.fit` called once
per network, for DC's evaluation ConvNet (width 128, instance norm, 28x28 MNIST-shaped images
padded to 32x32) on 10 and 100 images, full-batch SGD steps of cross-entropy.

Each side trains the same S networks (the same keys: the results agree, tests/test_protocols.py)
for --steps steps after a compiling run of the same length; the time is the best of --repeats.
Beside them: the vmapped call with the convolutions as patch matmuls (`im2col`: vmap turns lax's
convolution of S networks' inputs and weights into a grouped convolution, which XLA:CPU runs
slowly; as patches it is a batched matmul), and the arithmetic rate each side reaches (XLA's count
of one training step's floating-point operations) against a large float32 matmul's on the same
machine: the headroom that vmapping could use. Writes results/ensemble_speed.{md,json}.

    python -m benchmarks.ensemble_speed                      # S = 8, 10 and 100 images
    python -m benchmarks.ensemble_speed --sizes 10 --steps 20
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import best_seconds
from kip import data, models, report, train


def step_flops(model, config: train.TrainConfig, x: np.ndarray, y: np.ndarray) -> float:
    """XLA's count of the floating-point operations in one training step of one network on (x, y)."""
    state = train.init_state(model, config, jax.random.PRNGKey(0), jnp.asarray(x[:1]))
    one_step = jax.jit(lambda st: train.step(model, config, st, (jnp.asarray(x), jnp.asarray(y)), jnp.ones(len(x)),
                                             jax.random.PRNGKey(1)))
    cost = one_step.lower(state).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def matmul_gflops(size: int = 2048) -> float:
    """GFLOP/s of a size x size float32 matmul here (best of several): the machine's practical rate."""
    a = jnp.asarray(np.random.RandomState(0).randn(size, size), jnp.float32)
    product = jax.jit(jnp.dot)
    product(a, a).block_until_ready()
    return 2 * size ** 3 / best_seconds(lambda: product(a, a).block_until_ready(), min_runs=5) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="images trained on")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 10], help="steps per network, one per size")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="ensemble_speed")
    parser.add_argument("--results-dir", default=report.RESULTS)
    args = report.parse_args(parser)

    model = models.build("convnet3", 10, args.width, norm="instance", weight_init="torch", pad_to=32)
    patch_model = models.build("convnet3", 10, args.width, norm="instance", weight_init="torch", pad_to=32, im2col=True)
    peak = matmul_gflops()
    print(f"a 2048 x 2048 float32 matmul: {peak:.0f} GFLOP/s", flush=True)
    keys = jax.random.split(jax.random.PRNGKey(0), args.networks)
    rows = []
    steps_for = dict(zip(args.sizes, args.steps + args.steps[-1:] * len(args.sizes)))
    for n in args.sizes:
        steps = steps_for[n]
        rng = np.random.RandomState(n)
        x = rng.randn(n, 28, 28, 1).astype(np.float32)
        y = np.asarray(data.one_hot(np.arange(n) % 10, 10, centred=False))
        config = train.TrainConfig(steps=steps, batch_size=256, lr=0.01, loss="xent", weight_decay=5e-4,
                                   schedule="constant")

        def together(net=model):
            r = train.fit_many(net, x, y, config, keys, vectorize=True)
            jax.block_until_ready(r.variables)

        def one_after_another():
            for k in keys:
                jax.block_until_ready(train.fit(model, x, y, config, k).variables)

        timed = {}
        for name, fn in (("one call (vmapped)", together), ("one call per network", one_after_another),
                         ("one call (vmapped, patch matmuls)", lambda: together(patch_model))):
            fn()  # compiles
            timed[name] = best_seconds(fn, min_runs=args.repeats, min_total=0.0)
            print(f"{n} images, {name}: {timed[name]:.2f} s for {args.networks} networks x {steps} steps", flush=True)
        seq, vec = timed["one call per network"], timed["one call (vmapped)"]
        patches = timed["one call (vmapped, patch matmuls)"]
        flops = step_flops(model, config, x, y) * args.networks * steps
        rows.append({"images": n, "networks": args.networks, "steps": steps, "seconds_sequential": seq,
                     "seconds_vectorized": vec, "speedup": seq / vec, "seconds_vectorized_im2col": patches,
                     "speedup_im2col": seq / patches, "gflop": flops / 1e9,
                     "gflops_sequential": flops / seq / 1e9, "gflops_vectorized": flops / min(vec, patches) / 1e9,
                     "ms_per_network_step_sequential": 1e3 * seq / (args.networks * steps),
                     "ms_per_network_step_vectorized": 1e3 * vec / (args.networks * steps)})

    env = report.machine()
    lines = ["| images | S networks | steps each | S calls one after another | one call, vmapped | speed-up (goal >= 2x) | "
             "one call, vmapped, patch matmuls | its speed-up | ms per network-step (sequential / vmapped) | "
             "GFLOP/s (sequential / best vmapped) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['networks']} | {r['steps']} | {r['seconds_sequential']:.2f} s | "
                     f"{r['seconds_vectorized']:.2f} s | "
                     f"**{r['speedup']:.2f}x** | {r['seconds_vectorized_im2col']:.2f} s | **{r['speedup_im2col']:.2f}x** | "
                     f"{r['ms_per_network_step_sequential']:.1f} / {r['ms_per_network_step_vectorized']:.1f} | "
                     f"{r['gflops_sequential']:.0f} / {r['gflops_vectorized']:.0f} |")
    body = "\n".join(lines) + f"""

Training {args.networks} networks (DC's evaluation ConvNet: width {args.width}, instance norm, PyTorch
initialisation, 28x28x1 inputs padded to 32x32) for the table's full-batch SGD steps each: one
`kip.train.fit_many(..., vectorize=True)` call (the networks vmapped into one compiled step) against
`kip.train.fit` called once per network. Best of {args.repeats} runs after a compiling one, on
{env['device']}, {env['cpu']} ({env['cores']} cores). "patch matmuls": the same vmapped call with
the network's convolutions as patch matmuls (`models.build(..., im2col=True)`). GFLOP/s: XLA's
operation count of one network's training step ({', '.join(f"{r['gflop'] / (r['networks'] * r['steps']):.2f}" for r in rows)}
GFLOP at {', '.join(str(r['images']) for r in rows)} images) x steps x networks over the time; a 2048 x 2048
float32 matmul runs at {peak:.0f} GFLOP/s here, the rate the training steps could at best approach,
so vmapping can speed them up by at most the ratio of that rate to the sequential side's. On this backend `fit_many` picks
{'the vmapped step' if jax.default_backend() != 'cpu' else 'one network after another'} by default
(`vectorize=None`).
"""
    report.write_results(args.name, "Many networks per compiled call against one call per network", body,
                         {"rows": rows, "matmul_gflops": peak, "args": vars(args)}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
