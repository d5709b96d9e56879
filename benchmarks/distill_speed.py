"""Seconds per outer iteration of DC and DM: kip's step (`kip.matching.make_step`: the classes
batched in one jitted call, real batches drawn on the device) against a straightforward per-class
Python loop of the same maths, the way the public PyTorch code is written (per class: draw its
real batch on the host, one jitted call for the class's loss and gradient in its synthetic
images; then one jitted image update). Both use the same network (the dc protocol's ConvNet at
--width, MNIST-shaped 28x28 images padded to 32x32) and the same loss functions.

Writes results/distill_speed.{md,json}.

    python -m benchmarks.distill_speed                       # DC and DM, 1 per class, width 64, 64 real/class
    python -m benchmarks.distill_speed --width 128 --real-batch 256
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import best_seconds
from kip import data, distill, matching, method_run, report

STRATEGY = "color_crop_cutout_scale_rotate"


def per_class_loop(settings: matching.Settings, model, embed, optimizer, x: np.ndarray, y: np.ndarray):
    """One outer iteration as the PyTorch code runs it (1 image update per iteration: DC at 1 per
    class, or DM): per class a host-drawn real batch and a jitted loss-and-gradient call."""
    rng = np.random.default_rng(0)
    by_class = [np.flatnonzero(y == c) for c in range(settings.num_classes)]

    @jax.jit
    def class_grad(syn_c, real_c, variables, key):
        if settings.method == "dm":
            loss = lambda s: matching.dm_loss(embed, variables, real_c[None], s[None], key, settings.strategy)
        else:
            loss = lambda s: matching.dc_loss(model, variables, real_c[None], s[None], key, settings.strategy)
        return jax.value_and_grad(loss)(syn_c)

    init = jax.jit((embed if settings.method == "dm" else model).init)
    update = jax.jit(optimizer.update)
    apply = jax.jit(lambda p, u: jax.tree_util.tree_map(lambda a, b: a + b, p, u))

    def iteration(state: matching.MatchState, step: int) -> matching.MatchState:
        key = jax.random.fold_in(state.key, step)
        images = state.params["images"].reshape((settings.num_classes, settings.ipc) + state.params["images"].shape[1:])
        variables = init(key, images[0, :1])
        grads, total = [], 0.0
        for c in range(settings.num_classes):
            real_c = jnp.asarray(x[rng.permutation(by_class[c])[: settings.real_batch]])
            loss, g = class_grad(images[c], real_c, variables, jax.random.fold_in(key, c))
            grads.append(g)
            total += loss
        g = {"images": jnp.concatenate(grads)}
        updates, opt_state = update(g, state.opt_state, state.params)
        return state._replace(params=apply(state.params, updates), opt_state=opt_state, step=state.step + 1)

    return iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["dc", "dm"], choices=("dc", "dsa", "dm"))
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--real-batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3, help="outer iterations per timed run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-lax-batched", dest="lax_batched", action="store_false",
                        help="skip timing DC's batched step with lax's convolutions (one slow iteration)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default="distill_speed")
    parser.add_argument("--results-dir", default=report.RESULTS)
    args = report.parse_args(parser)

    ds = data.load("mnist", args.data_dir) if args.data_dir else None
    if ds is None:  # random MNIST-shaped images: the timing does not depend on the pixels
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(6000, 28, 28, 1)).astype(np.float32), np.arange(6000) % 10
    else:
        x, y = ((ds.x_train - ds.x_train.mean()) / ds.x_train.std()).astype(np.float32), ds.y_train
    real = distill.train_data(x, y, 10, jnp.float32)
    model, embed, width = method_run.networks(args.width, 10)
    rows = []
    for method in args.methods:
        settings = matching.Settings(method, args.ipc, 10, args.real_batch, 1, 1, None if method == "dc" else STRATEGY)
        optimizer = matching.image_optimizer(matching.IMAGE_LR[method])
        start = matching.init_state(jnp.asarray(x[: 10 * args.ipc]), optimizer, jax.random.PRNGKey(0))
        batched = distill.make_multi_step(matching.make_step(settings, model, embed, optimizer), args.iterations)
        # a direct port loops over the classes with XLA's own convolutions
        looped = per_class_loop(settings, model.clone(im2col=False), embed, optimizer, x, y)
        # kip's batched step with XLA's convolutions, whose second-order gradients (DC) are slow when batched
        batched_lax = distill.make_multi_step(matching.make_step(settings, model.clone(im2col=False), embed, optimizer), 1) \
            if method != "dm" and args.lax_batched else None

        def run_batched(step_fn=batched):
            jax.block_until_ready(step_fn(start, real)[0].params)

        def run_looped():
            state = start
            for i in range(args.iterations):
                state = looped(state, i)
            jax.block_until_ready(state.params)

        timed = {}
        runs = [("batched", run_batched, args.iterations, args.repeats), ("per-class loop", run_looped, args.iterations, args.repeats)]
        if batched_lax is not None:
            runs.append(("batched, lax convolutions", lambda: run_batched(batched_lax), 1, 1))
        for name, fn, iterations, repeats in runs:
            fn()  # compiles
            timed[name] = best_seconds(fn, min_runs=repeats, min_total=0.0) / iterations
            print(f"{method}: {name} {timed[name]:.3f} s per iteration", flush=True)
        rows.append({"method": method, "ipc": args.ipc, "width": width, "real_batch": args.real_batch,
                     "seconds_batched": timed["batched"], "seconds_loop": timed["per-class loop"],
                     "seconds_batched_lax": timed.get("batched, lax convolutions"),
                     "speedup": timed["per-class loop"] / timed["batched"], "im2col": bool(model.im2col)})

    env = report.machine()
    lines = ["| method | images/class | width | real/class | per-class loop (a direct port) | kip, classes batched "
             "| speed-up (goal >= 2x) | kip batched with XLA's convolutions |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lax = "-" if r["seconds_batched_lax"] is None else f"{r['seconds_batched_lax']:.2f} s"
        lines.append(f"| {r['method'].upper()} | {r['ipc']} | {r['width']} | {r['real_batch']} | {r['seconds_loop']:.3f} s | "
                     f"{r['seconds_batched']:.3f} s | **{r['speedup']:.2f}x** | {lax} |")
    body = "\n".join(lines) + f"""

Seconds per outer iteration (a fresh network, one image update at {args.ipc} image(s) per class), best of
{args.repeats} runs of {args.iterations} iterations after a compiling run, on {env['device']}, {env['cpu']}
({env['cores']} cores). "kip" is `kip.matching.make_step`: the 10 classes in one jitted step (their
DSA draws applied class by class, then every class's images through the network as one batch;
DC's per-class gradients vmapped), real batches drawn on the device. The loop is what a direct port
of the public PyTorch code runs: per class, a host-drawn real batch and one jitted call of the
same `kip.matching` loss and its gradient, with XLA's own convolutions. DSA augmentation
({STRATEGY}) in DM, none in DC. Network: the dc protocol's ConvNet at width {width}; kip's DC runs
its convolutions as patch matmuls (im2col) on CPU: batched (vmap), the second-order gradients of
XLA's convolutions fall back to slow kernels (last column, one iteration), while one class at a
time they do not.
"""
    report.write_results(args.name, "DC and DM: classes batched in one step against a per-class loop", body,
                         {"rows": rows, "args": vars(args)}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
