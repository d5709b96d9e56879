"""Seconds per KIP step, exact ConvNet3 kernel against its random-feature estimate rf-convnet3,
same support set and target batch, on this machine; KRR test accuracy after the same steps; and
the step time of rf-convnet3 split over 1, 2, 4 forced host devices. Writes results/rf_speed.{md,json}.

    python benchmarks/rf_speed.py --data-dir ../shared/datasets

Speed cells run on MNIST (28x28, where the exact kernel's pairs of 4-D covariances cost the most),
the accuracy cells by default on the embedded 8x8 digits (where exact-kernel KIP runs many steps in
minutes); results/rf_speed.md is `--acc-dataset mnist --acc-test-size 2000 --acc-seeds 3
--acc-exact-nngp` (with the exact NNGP, the kernel random features estimate, beside the NTK);
results/rf_speed_platt.md the same accuracy cells with RFAD's recipe (`--acc-loss platt
--acc-learn-labels --skip-speed --skip-scaling --name rf_speed_platt`).
Both sets of sizes are printed in the table. Compilation is not timed (`lower().compile()` first).
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kip import data, distill, krr, parallel, report, run
from kip.kernels import rf

FORCE_DEVICES = "--xla_force_host_platform_device_count={}"


def kip_cell(ds: data.Dataset, options: run.KernelOptions, ipc: int, target_batch: int, steps: int, chunk: int,
             test_size: int = 0, seed: int = 0, devices: int | None = None, warmup: bool = True,
             precision: str = "float64", loss: str = "mse", learn_labels: bool = False, kernel_fn=None,
             in_scan: bool = True) -> dict:
    """`steps` KIP steps (Adam 0.04, learned images; labels fixed unless `learn_labels`; `loss`
    'mse' or 'platt') from a class-balanced real support set; seconds per step (median over
    chunks of `chunk` steps, compilation and, with `warmup`, one more chunk excluded) and, with
    test_size > 0, the KRR accuracy on the first `test_size` test images under the exact kernel.
    `kernel_fn`: KIP with this kernel instead of `options`' (which still names the preset);
    `in_scan=False`: each chunk as `chunk` calls of one jitted step instead of one `lax.scan`.
    With `warmup`, the state has taken `steps + chunk` steps at the end (`steps_taken`).
    A timing harness over the library's step (`distill.make_step` / `make_multi_step`), not a second
    training loop: `loop.optimise` compiles inside its first chunk and interleaves evaluations and
    checkpoints, which a per-step timing must leave out."""
    problem = run.prepare(ds, options, precision=precision, devices=devices)
    if kernel_fn is not None:
        problem = dataclasses.replace(problem, kernel_fn=kernel_fn)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    idx = data.balanced_subset(init_key, ds.y_train, ds.num_classes, ipc)
    train = distill.train_data(problem.x_train, ds.y_train, ds.num_classes, problem.dtype,
                               problem.layer.kernel_fn if problem.layer else None)
    opt = optax.adam(0.04)
    state = distill.init_state(train.images[idx], train.targets[idx], opt, run_key, loss)
    state, train = parallel.replicate(problem.mesh, (state, train))
    step = distill.make_step(problem.kernel_fn, opt, min(target_batch, len(ds.y_train)), learn_labels=learn_labels,
                             loss=loss, mesh=problem.mesh)
    start = time.perf_counter()
    if in_scan:
        runner = distill.make_multi_step(step, chunk).lower(state, train).compile()
    else:  # `chunk` calls of one jitted step
        one_step = jax.jit(step).lower(state, train).compile()

        def runner(state, train):
            metrics = []
            for _ in range(chunk):
                state, m = one_step(state, train)
                metrics.append(m)
            return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)
    compile_s = time.perf_counter() - start
    if warmup:  # the first call after compiling runs slower (allocation); not timed where steps are cheap
        state, _ = jax.block_until_ready(runner(state, train))
    times = []
    for _ in range(steps // chunk):
        start = time.perf_counter()
        state, metrics = runner(state, train)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - start) / chunk)
    random_features = rf.parse(options.name) is not None
    cell = {"dataset": ds.name, "kernel": options.name, "get": "nngp" if random_features else options.get,
            "rf_models": options.rf_models if random_features else None,
            "rf_width": options.rf_width if random_features else None, "support": len(idx),
            "target_batch": target_batch, "loss": loss, "learn_labels": learn_labels, "steps": len(times) * chunk,
            "steps_taken": (len(times) + warmup) * chunk, "devices": problem.mesh.size, "precision": precision,
            "step_s_median": float(np.median(times)), "step_s_all": times, "compile_s": compile_s,
            "final_loss": float(metrics["loss"][-1])}
    if test_size:
        cell["test_size"] = test_size
        cell["test_accuracy"] = exact_accuracy(problem, rf.parse(options.name) or options.name, state.params, test_size)
    return cell


def exact_accuracy(problem: run.Problem, arch: str, params: dict, test_size: int) -> float:
    """KRR accuracy of the learned support on the first `test_size` test images under the exact
    kernel of preset `arch`: the one evaluation both methods share."""
    ds = problem.dataset
    kernel_fn, _ = run.make_kernel(run.KernelOptions(arch), ds, problem.dtype)
    x_test = jnp.asarray(problem.preprocessing.apply(ds.x_test[:test_size]), problem.dtype)
    labels = jnp.asarray(ds.y_test[:test_size])
    targets = data.one_hot(ds.y_test[:test_size], ds.num_classes, dtype=problem.dtype)
    metrics = jax.jit(lambda xs, ys: krr.test_metrics(kernel_fn, xs, ys, x_test, labels, targets)[0])
    return float(metrics(*jax.device_get((params["images"], params["labels"]))))


def rf_options(config: str) -> run.KernelOptions:
    """'8x256' -> rf-convnet3 with 8 models of width 256."""
    models, width = map(int, config.split("x"))
    return run.KernelOptions("rf-convnet3", models, width)


def label(options: run.KernelOptions, precision: str = "float64") -> str:
    if rf.parse(options.name):
        return f"rf-convnet3 ({options.rf_models} x width {options.rf_width})"
    return f"convnet3 (exact {options.get.upper()}, {precision})"


def scaling_worker(args) -> None:
    """One cell in this process (started by `scaling` with XLA_FLAGS forcing the device count)."""
    jax.config.update("jax_enable_x64", True)
    ds = data.load(args.speed_dataset, args.data_dir)
    print(json.dumps(kip_cell(ds, rf_options(args.rf_configs[-1]), 1, args.scaling_target_batch, args.rf_steps,
                              args.rf_chunk)))


def scaling(args, counts=(1, 2, 4)) -> list[dict]:
    """rf-convnet3 step time with 1, 2, 4 forced host devices, each in its own process."""
    rows = []
    for n in counts:
        env = {**os.environ, "XLA_FLAGS": FORCE_DEVICES.format(n),
               "PYTHONPATH": report.ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        argv = [sys.executable, os.path.abspath(__file__), "--scaling-worker", *sys.argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=report.ROOT)
        if proc.returncode:
            raise RuntimeError(f"scaling worker with {n} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--speed-dataset", default="mnist")
    parser.add_argument("--speed-sizes", nargs="+", default=["1x20", "10x100"], metavar="IPCxTARGETS",
                        help="speed cells: support images per class x target batch")
    parser.add_argument("--exact-steps", type=int, default=1, help="timed exact-kernel steps per speed cell")
    parser.add_argument("--exact-precisions", nargs="+", default=["float64", "float32"],
                        help="precisions of the exact-kernel speed cells (the first is the accuracy cells' too)")
    parser.add_argument("--rf-steps", type=int, default=5, help="timed rf steps per speed cell (after one untimed chunk)")
    parser.add_argument("--rf-chunk", type=int, default=5, help="rf steps per jitted call")
    parser.add_argument("--rf-configs", nargs="+", default=["8x256", "4x128"], metavar="MODELSxWIDTH",
                        help="random-feature kernels compared (RFAD's 8x256 first); scaling uses the last")
    parser.add_argument("--acc-dataset", default="digits")
    parser.add_argument("--acc-ipc", type=int, default=1)
    parser.add_argument("--acc-target-batch", type=int, default=100)
    parser.add_argument("--acc-steps", type=int, default=100, help="KIP steps before the accuracy comparison")
    parser.add_argument("--acc-seeds", type=int, default=5,
                        help="accuracy cells per kernel, each from its own real support and target batches (0: none)")
    parser.add_argument("--acc-exact-nngp", action="store_true",
                        help="also KIP with the exact ConvNet3 NNGP (the kernel random features estimate)")
    parser.add_argument("--acc-loss", default="mse", choices=tuple(distill.LOSSES),
                        help="the accuracy cells' KIP loss (RFAD's recipe: platt with --acc-learn-labels)")
    parser.add_argument("--acc-learn-labels", action="store_true", help="the accuracy cells learn the labels too")
    parser.add_argument("--acc-test-size", type=int, default=0,
                        help="evaluate on the first N test images (default: all)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--name", default="rf_speed", help="results/NAME.{md,json}")
    parser.add_argument("--scaling-target-batch", type=int, default=128)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
    args = report.parse_args(parser)
    if args.scaling_worker:
        return scaling_worker(args)
    jax.config.update("jax_enable_x64", True)
    kernels = [run.KernelOptions("convnet3"), *map(rf_options, args.rf_configs)]
    n_exact = len(args.exact_precisions)

    speed_ds = data.load(args.speed_dataset, args.data_dir)
    speed = []
    for size in [] if args.skip_speed else args.speed_sizes:
        ipc, target_batch = map(int, size.split("x"))
        speed.append([kip_cell(speed_ds, kernels[0], ipc, target_batch, args.exact_steps, 1, warmup=False, precision=p)
                      for p in args.exact_precisions] +
                     [kip_cell(speed_ds, k, ipc, target_batch, args.rf_steps, args.rf_chunk) for k in kernels[1:]])
        print(json.dumps(speed[-1]), flush=True)
    acc_ds = data.load(args.acc_dataset, args.data_dir)
    chunk = min(args.acc_steps, 10)
    test_size = min(args.acc_test_size or len(acc_ds.y_test), len(acc_ds.y_test))
    acc_kernels = kernels[:1] + [run.KernelOptions("convnet3", get="nngp")] * args.acc_exact_nngp + kernels[1:]
    acc = []
    for k in acc_kernels:
        acc.append([])
        for seed in range(args.acc_seeds):
            acc[-1].append(kip_cell(acc_ds, k, args.acc_ipc, args.acc_target_batch, args.acc_steps, chunk,
                                    test_size=test_size, seed=seed, precision=args.exact_precisions[0],
                                    loss=args.acc_loss, learn_labels=args.acc_learn_labels))
            print(json.dumps(acc[-1][-1]), flush=True)
    scale = [] if args.skip_scaling else scaling(args)

    over = " / ".join(args.exact_precisions)
    lines = [] if not speed else [
        f"| data set | support | target batch | KIP kernel | s / step (median; steps timed) | speed-up over exact ({over}) |",
        "|---|---|---|---|---|---|"]
    for cells in speed:
        exact = [c["step_s_median"] for c in cells[:n_exact]]
        for i, (k, c) in enumerate(zip([kernels[0]] * n_exact + kernels[1:], cells)):
            ratio = "" if i < n_exact else " / ".join(f"**{e / c['step_s_median']:.1f}x**" for e in exact)
            lines.append(f"| {speed_ds.name} | {c['support']} | {c['target_batch']} | {label(k, c['precision'])} | "
                         f"{c['step_s_median']:.3f} ({c['steps']}) | {ratio} |")
    which = "all" if test_size == len(acc_ds.y_test) else "the first"
    lines += [] if not args.acc_seeds else [""] * bool(lines) + [
                  f"KRR test accuracy after {acc[0][0]['steps_taken']} KIP steps ({args.acc_steps} timed after {chunk} "
                  f"untimed), all evaluated with the exact ConvNet3 NTK on {which} "
                  f"{test_size} {acc_ds.name} test images; mean +- sd over {args.acc_seeds} seeds (seed s: "
                  "its own real starting support and target batches, the same for every kernel), and the mean +- sd of "
                  "the per-seed differences from the exact kernel's accuracy:", "",
              "| data set | support | target batch | KIP kernel | s / step | test accuracy | minus exact NTK's"
              + (" | minus exact NNGP's" if args.acc_exact_nngp else "") + " | per seed |",
              "|---|---|---|---|---|---|---|---|" + "---|" * args.acc_exact_nngp]
    baselines = [np.array([c["test_accuracy"] for c in cells]) for cells in acc[:1 + args.acc_exact_nngp]]
    for i, (k, cells) in enumerate(zip(acc_kernels, acc if args.acc_seeds else [])):
        accs = np.array([c["test_accuracy"] for c in cells])
        diffs = ["" if i <= j else "{:+.2f} +- {:.2f}".format(*report.mean_std(100 * (accs - base)))
                 for j, base in enumerate(baselines)]
        c = cells[0]
        lines.append(f"| {acc_ds.name} | {c['support']} | {c['target_batch']} | {label(k, c['precision'])} | "
                     f"{np.median([c['step_s_median'] for c in cells]):.3f} | "
                     "{:.2f} +- {:.2f}".format(*report.mean_std(100 * accs)) + f" | {' | '.join(diffs)} | "
                     f"{', '.join(f'{100 * a:.2f}' for a in accs)} |")
    if scale:
        lines += ["", f"{label(rf_options(args.rf_configs[-1]))} step time, {speed_ds.name}, support {scale[0]['support']}, "
                      f"target batch {args.scaling_target_batch} split over forced host devices "
                      f"(`XLA_FLAGS={FORCE_DEVICES.format('N')}`, one process each; all share this machine's cores, "
                      "so this shows the split works and what it costs, not a speed-up):", "",
                  "| devices | s / step (median) | relative to 1 device |", "|---|---|---|"]
        for c in scale:
            lines.append(f"| {c['devices']} | {c['step_s_median']:.3f} | {scale[0]['step_s_median'] / c['step_s_median']:.2f}x |")
    env = report.machine()
    lines += ["", f"Random-feature cells: float64 images, features in float32, their Gram matrix and the ridge solve in float64; "
                  f"ridge {krr.DEFAULT_REG} x tr(K)/n; Adam 0.04, images learned, labels "
                  f"{'learned' if args.acc_learn_labels else 'fixed'} in the accuracy cells (fixed in the speed cells), "
                  f"{args.acc_loss.upper() if args.acc_loss == 'mse' else 'Platt'} loss in the accuracy cells (MSE in the "
                  f"speed cells); fresh random networks "
                  f"every step. The exact kernel's step costs ~ support x targets pairs, the random features' ~ "
                  f"(support + targets) x models x width^2, so the ratio grows with the support size. Machine load "
                  f"(1-min average) at the end: {os.getloadavg()[0]:.1f} on {env['cores']} cores (this benchmark alone keeps "
                  f"about {env['cores']} busy; more means other jobs shared the cores). Goals (issue 4): >= 100x per step, accuracy "
                  "within 1 point."]
    body = "\n".join(lines)
    report.write_results(args.name, "KIP step time: exact ConvNet3 kernel vs random features (rf-convnet3)", body,
                         {"speed": speed, "accuracy": acc, "scaling": scale, "args": vars(args)}, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
