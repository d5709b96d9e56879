"""The neural-tangents reference for the benchmarks, run in its side environment
(jax==0.5.3, jaxlib==0.5.3, neural-tangents==0.6.5) as a separate process.

A straightforward port of the KIP notebook's loop: NT's FC kernel, float64, class-balanced
target batches sampled on the host with numpy, Adam from jax.example_libraries.
Prints one JSON line per configuration. Not part of the `kip` package.

    python benchmarks/nt_reference.py kip-step --data ../shared/datasets/mnist.npz --support 10 100
"""

import argparse
import functools
import json
import sys
import time
import types

# neural-tangents' experimental module imports tensorflow; it is not needed here.
sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.example_libraries import optimizers  # noqa: E402
from neural_tangents import stax  # noqa: E402
from timing import best_seconds  # noqa: E402  (benchmarks/timing.py, beside this script)


def fc_kernel(depth, num_classes):
    layers = [stax.Flatten()]
    for _ in range(depth):
        layers += [stax.Dense(1024, W_std=np.sqrt(2), b_std=0.1), stax.Relu()]
    layers += [stax.Dense(num_classes, W_std=np.sqrt(2), b_std=0.1)]
    return stax.serial(*layers)[2]


def class_balanced(rng, labels, size, num_classes):
    per = size // num_classes
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), per, replace=False) for c in range(num_classes)])


def kip_step_benchmark(args):
    with np.load(args.data) as f:
        x, y = f["x_train"].astype(np.float64), f["y_train"].astype(np.int64)
        x_test, y_test = f["x_test"].astype(np.float64), f["y_test"].astype(np.int64)
    if x.ndim == 3:
        x, x_test = x[..., None], x_test[..., None]
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    x, x_test = (x - mean) / std, (x_test - mean) / std
    num_classes = int(y.max()) + 1
    onehot = np.eye(num_classes)[y] - 1.0 / num_classes
    kernel_fn = jax.jit(functools.partial(fc_kernel(1, num_classes), get="ntk"))

    def loss_fn(params, x_t, y_t, reg=1e-6):
        k_ss = kernel_fn(params["x"], params["x"])
        k_ts = kernel_fn(x_t, params["x"])
        k_reg = k_ss + reg * jnp.trace(k_ss) / k_ss.shape[0] * jnp.eye(k_ss.shape[0])
        pred = k_ts @ jax.scipy.linalg.solve(k_reg, jax.lax.stop_gradient(params["y"]), assume_a="pos")
        return 0.5 * jnp.mean((pred - y_t) ** 2)

    for n_support in args.support:
        rng = np.random.RandomState(0)
        idx = class_balanced(rng, y, n_support, num_classes)
        opt_init, opt_update, get_params = optimizers.adam(0.04)
        state = opt_init({"x": jnp.asarray(x[idx]), "y": jnp.asarray(onehot[idx])})

        @jax.jit
        def update(i, state, x_t, y_t):
            loss, grads = jax.value_and_grad(loss_fn)(get_params(state), x_t, y_t)
            return opt_update(i, grads, state), loss

        step_times, total_times = [], []
        for i in range(args.steps):
            start = time.perf_counter()
            t_idx = class_balanced(rng, y, args.target_batch, num_classes)
            x_t, y_t = jnp.asarray(x[t_idx]), jnp.asarray(onehot[t_idx])
            jax.block_until_ready((x_t, y_t))
            mid = time.perf_counter()
            state, loss = update(i, state, x_t, y_t)
            jax.block_until_ready(state)
            end = time.perf_counter()
            if i >= args.warmup:
                step_times.append(end - mid)
                total_times.append(end - start)
        params = get_params(state)
        k_ss = kernel_fn(params["x"], params["x"])
        k_reg = k_ss + 1e-6 * jnp.trace(k_ss) / k_ss.shape[0] * jnp.eye(k_ss.shape[0])
        alpha = jax.scipy.linalg.solve(k_reg, params["y"], assume_a="pos")
        pred = np.concatenate([kernel_fn(x_test[i:i + 1000], params["x"]) @ alpha for i in range(0, len(x_test), 1000)])
        print(json.dumps({
            "impl": "neural-tangents", "version": "0.6.5", "jax": jax.__version__, "kernel": "fc1",
            "support": n_support, "target_batch": args.target_batch, "dtype": "float64",
            "step_ms_median": 1e3 * float(np.median(step_times)),
            "with_sampling_ms_median": 1e3 * float(np.median(total_times)),
            "steps": args.steps, "steps_timed": args.steps - args.warmup, "final_loss": float(loss),
            "test_accuracy": float(np.mean(np.argmax(pred, 1) == y_test)),
        }), flush=True)


def preset(name, num_classes=10):
    """The kernel presets of kip, built with neural-tangents' layers."""
    w, b = np.sqrt(2), 0.1
    if name.startswith("fc"):
        return fc_kernel(int(name[2:]), num_classes)
    conv = lambda: stax.Conv(1024, (3, 3), padding="SAME", W_std=w, b_std=b)  # noqa: E731
    layers = [conv(), stax.Relu()] if name == "convnet" else []
    for _ in range(3):
        layers += [conv(), stax.Relu(), stax.AvgPool((2, 2), (2, 2))]
    return stax.serial(*layers, stax.Flatten(), stax.Dense(num_classes, W_std=w, b_std=b))[2]


def kernel_speed_benchmark(args):
    """Seconds per kernel entry, forward and forward+gradient (value and gradient w.r.t. x1), and XLA's
    memory accounting, for inputs drawn from numpy RandomState(seed) as kip's side draws them."""
    dtype = {"float32": jnp.float32, "float64": jnp.float64}[args.dtype]
    shape = tuple(args.shape)
    rng = np.random.RandomState(args.seed)
    x1 = jnp.asarray(rng.randn(args.n1, *shape), dtype)
    x2 = jnp.asarray(rng.randn(args.n2, *shape), dtype)
    w = jnp.asarray(rng.randn(args.n1, args.n2), dtype)
    kernel_fn = functools.partial(preset(args.kernel), get="ntk")
    forward = jax.jit(kernel_fn)
    grad = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(w * kernel_fn(a, b))))  # as kernel_speed.py
    out = {"impl": "neural-tangents", "jax": jax.__version__, "kernel": args.kernel, "shape": shape,
           "dtype": args.dtype, "n1": args.n1, "n2": args.n2}
    for name, fn in (("forward", forward), ("forward_grad", grad)):
        compiled = fn.lower(x1, x2).compile()
        mem = compiled.memory_analysis()
        out[f"{name}_peak_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
        result = jax.block_until_ready(fn(x1, x2))
        out[f"{name}_s_per_entry"] = best_seconds(lambda: jax.block_until_ready(fn(x1, x2)), args.repeats) / (args.n1 * args.n2)
        if name == "forward":
            np.save(args.save, np.asarray(result))
    print(json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("kernel-speed")
    p.add_argument("--kernel", required=True)
    p.add_argument("--shape", type=int, nargs=3, required=True)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--n1", type=int, default=2)
    p.add_argument("--n2", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--save", required=True, help="where to write the forward kernel (.npy)")
    p = sub.add_parser("kip-step")
    p.add_argument("--data", required=True)
    p.add_argument("--support", type=int, nargs="+", default=[10, 100])
    p.add_argument("--target-batch", type=int, default=5000)
    p.add_argument("--steps", type=int, default=200, help="KIP steps (all but the warm-up ones are timed), then KRR test accuracy")
    p.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.command == "kip-step":
        kip_step_benchmark(args)
    elif args.command == "kernel-speed":
        kernel_speed_benchmark(args)


if __name__ == "__main__":
    main()
