"""Per-example gradient norms (GraNd): `kip.scores.grand` (jax.vmap(jax.grad), batched) against
jax.jacrev of the per-example loss vector over the batch, as the public Data Diet code computes
them, for a small ConvNet and ResNet-18 on 32x32x3 inputs, in one run.

Throughput: examples per second, median over repeats after a compiling call. Memory: XLA's own
account of the compiled program (`compiled.memory_analysis()`): temporaries, and the peak
(arguments + outputs + temporaries). Both methods see the same parameters and the same batch and
must agree. Writes results/grand_speed.{md,json}.

    python -m benchmarks.grand_speed
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip import models, report, scores

MiB = 2**20


def jacrev_grand(apply_fn, variables, x, y):
    """The Data Diet code's GraNd: the Jacobian of the (b,) per-example losses with respect to
    all parameters by reverse mode over the batch (b backward passes of the whole batch),
    flattened to (b, P), then row norms."""
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    losses = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn({"params": p, **rest}, x), y)  # noqa: E731
    jac = jax.jacrev(losses)(params)
    flat = jnp.concatenate([j.reshape(len(x), -1) for j in jax.tree_util.tree_leaves(jac)], axis=1)
    return jnp.linalg.norm(flat, axis=1)


def batch_gradient_norm(apply_fn, variables, x, y):
    """Not per-example: the norm of the mean loss's gradient, one backward pass of the batch (a
    lower bound on what per-example gradients can cost)."""
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn({"params": p, **rest}, x), y).mean()  # noqa: E731
    return optax.global_norm(jax.grad(loss)(params))


def memory(fn, *args) -> dict:
    """Compiles fn(*args) and reads XLA's memory analysis (MiB)."""
    compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    temp, arg, out = m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes
    return {"temp_mib": temp / MiB, "peak_mib": (temp + arg + out - m.alias_size_in_bytes) / MiB}


def throughput(fn, args, n: int, repeats: int) -> tuple[float, np.ndarray]:
    """(examples per second, the result): median of `repeats` timed calls after a compiling one."""
    f = jax.jit(fn)
    out = np.asarray(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return n / float(np.median(times)), out


def bench(name: str, width: int, batch: int, repeats: int, scale: int) -> dict:
    model = models.build(name, num_classes=10, width=width)
    key_x, key_y, key_init = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(key_x, (batch, 32, 32, 3))
    y = jax.random.randint(key_y, (batch,), 0, 10)
    variables = jax.jit(model.init)(key_init, x)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(variables["params"]))
    ours = lambda v, x, y: scores.grand(model.apply, v, x, y, batch_size=batch)  # noqa: E731
    last = lambda v, x, y: scores.grand(model.apply, v, x, y, batch_size=batch, last_layer_only=True)  # noqa: E731
    theirs = lambda v, x, y: jacrev_grand(model.apply, v, x, y)  # noqa: E731
    mean_grad = lambda v, x, y: batch_gradient_norm(model.apply, v, x, y)  # noqa: E731
    print(f"{name} (width {width}, {n_params:,} parameters), batch {batch}:", flush=True)
    row = {"model": name, "width": width, "parameters": int(n_params), "batch": batch, "repeats": repeats}
    for label, fn in (("grand", ours), ("jacrev", theirs), ("grand_last_layer", last)):
        rate, out = throughput(fn, (variables, x, y), batch, repeats)
        row[label] = {"examples_per_s": rate, **memory(fn, variables, x, y)}
        row[label + "_scores"] = out
        print(f"  {label}: {rate:.1f} examples/s, peak {row[label]['peak_mib']:.0f} MiB", flush=True)
    row["batch_gradient"] = {"examples_per_s": throughput(mean_grad, (variables, x, y), batch, repeats)[0]}
    rel = np.abs(row["grand_scores"] - row["jacrev_scores"]) / row["jacrev_scores"]
    row["max_relative_difference"] = float(rel.max())
    # bounded memory: `scale` x more examples, the same batch of per-example gradients at a time
    big = jnp.concatenate([x] * scale), jnp.concatenate([y] * scale)
    row["grand_scaled"] = {"examples": batch * scale, **memory(ours, variables, *big)}
    for label in ("grand_scores", "jacrev_scores", "grand_last_layer_scores"):
        row.pop(label)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--convnet-width", type=int, default=64)
    parser.add_argument("--convnet-batch", type=int, default=64)
    parser.add_argument("--resnet-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=8, help="grand on this many times the batch, for its memory")
    args = report.parse_args(parser)
    rows = [bench("convnet", args.convnet_width, args.convnet_batch, args.repeats, args.scale),
            bench("resnet18", 64, args.resnet_batch, args.repeats, args.scale)]
    lines = ["| model | parameters | batch | GraNd, kip (vmap(grad)) ex/s | jax.jacrev over the batch ex/s | speed-up "
             "| peak memory kip / jacrev (MiB) | temporaries kip / jacrev (MiB) | kip on "
             f"{args.scale} x the batch: peak / temporaries (MiB) | last layer only ex/s | one gradient of the batch's mean loss ex/s | max rel. difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, j, s = r["grand"], r["jacrev"], r["grand_scaled"]
        lines.append(f"| {r['model']} (width {r['width']}) | {r['parameters']:,} | {r['batch']} | {g['examples_per_s']:.1f} "
                     f"| {j['examples_per_s']:.2f} | {g['examples_per_s'] / j['examples_per_s']:.1f}x "
                     f"| {g['peak_mib']:.0f} / {j['peak_mib']:.0f} | {g['temp_mib']:.0f} / {j['temp_mib']:.0f} "
                     f"| {s['peak_mib']:.0f} / {s['temp_mib']:.0f} | {r['grand_last_layer']['examples_per_s']:.1f} "
                     f"| {r['batch_gradient']['examples_per_s']:.1f} | {r['max_relative_difference']:.1e} |")
    body = "\n".join(lines) + f"""

Per-example gradient norms of the softmax cross-entropy over all parameters, eval mode, float32,
random 32x32x3 inputs and labels at initialisation (throughput does not depend on the values).
"kip" is `kip.scores.grand`: `jax.vmap(jax.grad(loss of one example))` over blocks of `batch`
examples (`lax.map`), the squared norms summed per leaf inside the block. "jacrev" is the public
Data Diet code's way: `jax.jacrev` of the (batch,) loss vector with respect to the parameters,
flattened to (batch, P): reverse mode runs one backward pass of the whole batch per example, so
its cost grows with batch^2. Throughput: median of {args.repeats} calls after a compiling one.
Memory: XLA's `memory_analysis()` of each compiled program (peak = arguments + outputs +
temporaries); the "{args.scale} x the batch" column compiles kip's GraNd on {args.scale} times as many
examples: its temporaries stay those of one block (bounded memory), its arguments grow with the data.
"Last layer only" is `grand(..., last_layer_only=True)` (the cheap approximation, not the paper's
score); "one gradient of the batch's mean loss" is ordinary training's single backward pass, not
per-example: what per-example gradients cost beyond it is the price of exactness.
Goal (issue 6): at least 3x faster with bounded memory. Run it alone: other jobs on the 2 cores
slow both methods, not always alike (the header's load average says how busy the machine was).
"""
    report.write_results("grand_speed", "GraNd: per-example gradients by vmap(grad) against jax.jacrev (CPU)", body,
                         {"rows": rows, "args": vars(args)}, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
