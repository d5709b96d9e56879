"""Seconds per KIP step, FC1 kernel, this project against neural-tangents, in one run.

Ours: the jitted step with the class-balanced target batch drawn on the device (sampling
counted), float64 and float32. Reference: a straightforward neural-tangents port of the
authors' notebook (float64, batches sampled on the host), in its side environment as a
separate process, timed both as the jitted step alone and with its host sampling.
Both run `--steps` KIP steps from a class-balanced real support set and report KRR test accuracy at the
end, so speed is compared at equal accuracy. Writes results/kip_step.{md,json}.

    python -m benchmarks.kip_step --data-dir ../shared/datasets
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from kip import data, distill, kernels, krr, preprocess, report

CHUNK = 10  # steps per jitted call; the first call (compilation) is not timed


def ours(ds, prep, n_support, dtype, steps, target_batch, seed=0) -> dict:
    x_train = jnp.asarray(prep.apply(ds.x_train), dtype)
    x_test = jnp.asarray(prep.apply(ds.x_test), dtype)
    layer = kernels.fc(1, num_classes=ds.num_classes)
    kfn = functools.partial(layer.kernel_fn, get="ntk")
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    idx = data.balanced_subset(init_key, ds.y_train, ds.num_classes, n_support // ds.num_classes)
    train = distill.train_data(x_train, ds.y_train, ds.num_classes, dtype, layer.kernel_fn)
    opt = optax.adam(0.04)
    state = distill.init_state(train.images[idx], train.targets[idx], opt, run_key)
    run = distill.make_multi_step(distill.make_step(kfn, opt, target_batch), CHUNK)
    times = []
    for i in range(steps // CHUNK):
        start = time.perf_counter()
        state, metrics = run(state, train)
        jax.block_until_ready(state)
        if i:
            times.append((time.perf_counter() - start) / CHUNK)
    pred = jax.jit(lambda xs, ys: krr.predict(kfn, xs, ys, x_test))(state.params["images"], state.params["labels"])
    return {
        "impl": "kip", "kernel": "fc1", "support": n_support, "target_batch": target_batch,
        "dtype": jnp.dtype(dtype).name, "step_ms_median": 1e3 * float(np.median(times)),
        "steps": steps, "steps_timed": len(times) * CHUNK, "final_loss": float(metrics["loss"][-1]),
        "test_accuracy": float(np.mean(np.argmax(np.asarray(pred), 1) == ds.y_test)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--support", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--target-batch", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--nt-python", default=common.default_nt_python(), help="python of the neural-tangents side env")
    args = report.parse_args(parser)
    jax.config.update("jax_enable_x64", True)

    ds = data.load(args.dataset, args.data_dir)
    reference = common.run_nt(args.nt_python, "kip-step", "--data", f"{args.data_dir}/{args.dataset}.npz",
                              "--support", *map(str, args.support), "--target-batch", str(args.target_batch),
                              "--steps", str(args.steps))
    prep = preprocess.fit(ds.x_train)
    rows = [ours(ds, prep, n, dt, args.steps, args.target_batch) for n in args.support for dt in (jnp.float64, jnp.float32)]

    nt = {r["support"]: r for r in reference}
    lines = [
        "| support | ours float64 (ms/step) | ours float32 | NT float64, step alone | NT float64, with its sampling "
        "| speed-up f64 (vs NT with sampling / step alone) | speed-up f32 | KRR test acc. after "
        f"{args.steps} steps: ours f64 / f32 / NT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in args.support:
        o64, o32 = (next(r for r in rows if r["support"] == n and r["dtype"] == d) for d in ("float64", "float32"))
        ref = nt.get(n)
        if ref:
            speed = (f"{ref['with_sampling_ms_median'] / o64['step_ms_median']:.2f}x / "
                     f"{ref['step_ms_median'] / o64['step_ms_median']:.2f}x")
            speed32 = (f"{ref['with_sampling_ms_median'] / o32['step_ms_median']:.2f}x / "
                       f"{ref['step_ms_median'] / o32['step_ms_median']:.2f}x")
            ref_cols = f"{ref['step_ms_median']:.1f} | {ref['with_sampling_ms_median']:.1f}"
            ref_acc = f"{100 * ref['test_accuracy']:.2f}"
        else:
            speed = speed32 = ref_cols = "not run | not run"
            ref_acc = "not run"
        lines.append(f"| {n} | {o64['step_ms_median']:.1f} | {o32['step_ms_median']:.1f} | {ref_cols} | {speed} | "
                     f"{speed32} | {100 * o64['test_accuracy']:.2f} / {100 * o32['test_accuracy']:.2f} / {ref_acc} |")
    body = "\n".join(lines) + f"""

{ds.name}, FC1 NTK, target batch {args.target_batch}, Adam 0.04, median over steps {CHUNK + 1}..{args.steps}.
Ours counts drawing the class-balanced target batch (on the device, inside the jitted step).
The reference is neural-tangents 0.6.5 on JAX 0.5.3 (side environment), the authors' notebook
loop: "step alone" times its jitted update, "with sampling" adds its host-side numpy sampling and
transfer. Both processes ran with OPENBLAS_NUM_THREADS={report.machine()['OPENBLAS_NUM_THREADS']}.
Goal (issue 2): at least 2x faster at equal accuracy, counting the batch sampling.
"""
    report.write_results("kip_step", "Seconds per KIP step: kip vs neural-tangents (FC1)", body,
                         {"ours": rows, "reference": reference, "args": vars(args)}, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
