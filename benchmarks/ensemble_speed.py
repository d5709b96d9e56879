"""S networks trained in one call against S calls one after another: `kip.train.fit_many` with the
networks vmapped into one compiled step (`vectorize=True`) against `kip.train.fit` called once
per network, for DC's evaluation ConvNet (width 128, instance norm, 28x28 MNIST-shaped images
padded to 32x32) on 10 and 100 images, full-batch SGD steps of cross-entropy.

Each side trains the same S networks (the same keys: the results agree, tests/test_protocols.py)
for --steps steps after a compiling run of the same length; the time is the best of --repeats.
Writes results/ensemble_speed.{md,json}.

    python -m benchmarks.ensemble_speed                      # S = 8, 10 and 100 images
    python -m benchmarks.ensemble_speed --sizes 10 --steps 20
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse

import jax
import numpy as np

from benchmarks.timing import best_seconds
from kip import data, models, report, train


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

        def together():
            r = train.fit_many(model, x, y, config, keys, vectorize=True)
            jax.block_until_ready(r.variables)

        def one_after_another():
            for k in keys:
                jax.block_until_ready(train.fit(model, x, y, config, k).variables)

        timed = {}
        for name, fn in (("one call (vmapped)", together), ("one call per network", one_after_another)):
            fn()  # compiles
            timed[name] = best_seconds(fn, min_runs=args.repeats, min_total=0.0)
            print(f"{n} images, {name}: {timed[name]:.2f} s for {args.networks} networks x {steps} steps", flush=True)
        seq, vec = timed["one call per network"], timed["one call (vmapped)"]
        rows.append({"images": n, "networks": args.networks, "steps": steps, "seconds_sequential": seq,
                     "seconds_vectorized": vec, "speedup": seq / vec,
                     "ms_per_network_step_sequential": 1e3 * seq / (args.networks * steps),
                     "ms_per_network_step_vectorized": 1e3 * vec / (args.networks * steps)})

    env = report.machine()
    lines = ["| images | S networks | steps each | S calls one after another | one call, vmapped | speed-up (goal >= 2x) | "
             "ms per network-step (sequential / vmapped) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['networks']} | {r['steps']} | {r['seconds_sequential']:.2f} s | "
                     f"{r['seconds_vectorized']:.2f} s | "
                     f"**{r['speedup']:.2f}x** | {r['ms_per_network_step_sequential']:.1f} / "
                     f"{r['ms_per_network_step_vectorized']:.1f} |")
    body = "\n".join(lines) + f"""

Training {args.networks} networks (DC's evaluation ConvNet: width {args.width}, instance norm, PyTorch
initialisation, 28x28x1 inputs padded to 32x32) for the table's full-batch SGD steps each: one
`kip.train.fit_many(..., vectorize=True)` call (the networks vmapped into one compiled step) against
`kip.train.fit` called once per network. Best of {args.repeats} runs after a compiling one, on
{env['device']}, {env['cpu']} ({env['cores']} cores). On this backend `fit_many` picks
{'the vmapped step' if jax.default_backend() != 'cpu' else 'one network after another'} by default
(`vectorize=None`).
"""
    report.write_results(args.name, "Many networks per compiled call against one call per network", body,
                         {"rows": rows, "args": vars(args)}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
