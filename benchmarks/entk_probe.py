"""Probe, not a library feature: could random features estimate the NTK instead of the NNGP?
KIP with the empirical NTK of freshly drawn finite ConvNet3s (each network's per-example
parameter gradients of one scalar output, NTK parameterization, as features; K ~ ΦΦᵀ averaged
over the networks), in the accuracy cells of benchmarks/rf_speed.py (same seeds, support, target
batches, Platt loss and learned labels, evaluated under the exact ConvNet3 NTK), to set beside
results/rf_speed_platt.md. Writes results/entk_probe.{md,json}.

    python benchmarks/entk_probe.py --data-dir ../shared/datasets

The per-example gradients come from `jax.vmap(jax.grad(...))`, unoptimised: the step time says
what this plain route costs, not what a tuned one would.
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import dataclasses
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.rf_speed import kip_cell  # noqa: E402
from kip import data, models, report, run  # noqa: E402
from kip.kernels import rf  # noqa: E402


@dataclasses.dataclass(frozen=True, eq=False)
class EmpiricalNTKFeatures(rf.RandomFeatures):
    """`rf.RandomFeatures` whose features are each network's per-example parameter gradients of
    its scalar output (readout and bias included): ΦΦᵀ is the networks' mean empirical NTK."""

    def features(self, x: jax.Array) -> jax.Array:
        """(n, ...) -> (n, n_models * parameters)."""
        net = models.build(self.arch, num_classes=1, width=self.width, parameterization="ntk", W_std=self.W_std,
                           b_std=self.b_std, param_dtype=self.dtype)
        x = jnp.asarray(x).astype(self.dtype)

        def one_model(key):
            variables = net.init(key, x[:1])
            grads = jax.vmap(jax.grad(lambda v, xi: net.apply(v, xi[None])[0, 0]), (None, 0))(variables, x)
            return jnp.concatenate([g.reshape(x.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)], axis=1)

        phi = [one_model(key) for key in jax.random.split(self.key, self.n_models)]
        return jnp.concatenate(phi, axis=1) / math.sqrt(self.n_models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--target-batch", type=int, default=100)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--name", default="entk_probe")
    args = report.parse_args(parser)
    jax.config.update("jax_enable_x64", True)
    ds = data.load(args.dataset, args.data_dir)
    options = run.KernelOptions("rf-convnet3", args.models, args.width)
    kernel_fn = EmpiricalNTKFeatures("convnet3", args.models, args.width, jax.random.PRNGKey(0))
    cells = []
    for seed in range(args.seeds):
        # Chunks of 10 steps as in rf_speed's accuracy cells (one untimed, then steps / 10), each
        # as 10 calls of one jitted step: inside lax.scan XLA:CPU ran these vmapped gradients
        # 3.4x slower (13.5 s per step against 4.0 s, support 10 x target batch 100).
        cells.append(kip_cell(ds, options, 1, args.target_batch, args.steps, 10, test_size=args.test_size, seed=seed,
                              loss="platt", learn_labels=True, kernel_fn=kernel_fn, in_scan=False))
        cells[-1].update(kernel="empirical NTK of random convnet3s", get="ntk")  # not options' NNGP estimate
        print(json.dumps(cells[-1]), flush=True)
    accs = 100 * np.array([c["test_accuracy"] for c in cells])
    body = f"""| data set | support | target batch | KIP kernel | s / step | test accuracy | per seed |
|---|---|---|---|---|---|---|
| {ds.name} | {cells[0]['support']} | {args.target_batch} | empirical NTK of {args.models} random ConvNet3s of width \
{args.width} | {np.median([c['step_s_median'] for c in cells]):.3f} | {'{:.2f} +- {:.2f}'.format(*report.mean_std(accs))} | \
{', '.join(f'{a:.2f}' for a in accs)} |

KRR test accuracy after {cells[0]['steps_taken']} KIP steps ({args.steps} timed after 10 untimed; Platt loss, learned labels, Adam 0.04, fresh networks every step),
evaluated with the exact ConvNet3 NTK on the first {args.test_size} {ds.name} test images; seeds as in
benchmarks/rf_speed.py (the same starting supports and target batches as results/rf_speed_platt.md).
"""
    report.write_results(args.name, "Probe: KIP with the empirical NTK of random finite networks as features", body,
                         {"cells": cells, "args": vars(args)}, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
