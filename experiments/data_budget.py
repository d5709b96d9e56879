"""How much data is enough? Test accuracy against the number of stored training examples, for
sets made five ways: KIP (learned images and labels), Label Solve (real images, solved
labels), EL2N-pruned real subsets (the hardest examples by early-training EL2N, class-balanced),
random class-balanced real subsets, and the full training set; each judged by the kernel (KRR,
FC1 NTK) and by a finite network (FC1, width 1024) trained on it. No paper here makes this
comparison.

    python experiments/data_budget.py --data-dir ../shared/datasets     # CPU mode: MNIST, 10..10,000 examples
    python experiments/data_budget.py --gpu --data-dir ../shared/datasets
    python experiments/data_budget.py --quick                          # embedded digits, a few minutes

Every KIP / Label Solve run, score run and trained network is kept under --runs-dir and reused
when the command runs again, so an interrupted run resumes. Writes
results/data_budget_<dataset>.{md,json} and two plots (kernel, network).
"""

from __future__ import annotations

from kip import entry

entry.configure(x64=True)  # an entry point: before numpy, scipy and JAX load; kernel runs solve in float64

import os
import time

import jax
import numpy as np

from kip import InputError, data, diet, io, label_solve, models, plots, prune, report, run, table, train, transfer

MODES = {
    # sizes: stored examples (multiples of the number of classes); kip_max: largest KIP support (KIP's
    # step costs O(n^3) in the support size); scores: EL2N of a small ConvNet at `score_epoch` of a
    # `score_epochs` schedule averaged over `score_runs` networks (the Data Diet CPU recipe).
    "cpu": dict(dataset="mnist", sizes=(10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000), kip_max=1000,
                kip_steps=500, target_batch=5000, seeds=2, net_steps=1000, score_runs=3, score_epoch=1,
                score_epochs=4, kernel_full=False),
    "gpu": dict(dataset="mnist", sizes=(10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000), kip_max=10000,
                kip_steps=5000, target_batch=10000, seeds=5, net_steps=5000, score_runs=10, score_epoch=1,
                score_epochs=4, kernel_full=False),
    "quick": dict(dataset="digits", sizes=(10, 200), kip_max=10, kip_steps=30, target_batch=300,
                  seeds=1, net_steps=100, score_runs=1, score_epoch=1, score_epochs=2, kernel_full=True),
}
KERNEL = "fc1"
NET_WIDTH = 1024
METHODS = ("KIP", "Label Solve", "EL2N", "random")


def main() -> None:
    args, mode, runs_dir = report.experiment_args(__doc__, "data_budget", "larger KIP supports, more steps and seeds",
                                                  "the embedded digits, small sizes: a smoke run")
    m = MODES[mode]
    progress = not args.no_progress
    started = time.time()

    ds = data.load(m["dataset"], None if m["dataset"] == "digits" else args.data_dir)
    n_train, num_classes = len(ds.y_train), ds.num_classes
    sizes = [n for n in m["sizes"] if n <= n_train and n % num_classes == 0]
    problem = run.prepare(ds, KERNEL)
    krr_accuracy = run.make_evaluator(problem, 1e-6, 1000)
    # problem.x_test may be padded to a multiple of the devices: the real test images come first
    x_train, x_test = np.asarray(problem.x_train), np.asarray(problem.x_test)[: len(ds.y_test)]
    one_hot = np.asarray(data.one_hot(ds.y_train, num_classes))  # centred, as KIP's labels start
    network = models.build("fc1", num_classes, NET_WIDTH)
    net_config = train.TrainConfig(steps=m["net_steps"])
    print(f"data budget ({mode}): {ds.name}, {n_train} training examples, sizes {sizes}; kernel {KERNEL}, "
          f"network fc1 width {NET_WIDTH}, {m['net_steps']} steps, {m['seeds']} seed(s)")

    recipe = diet.Recipe("convnet", 16, m["score_epochs"], 32, 0.05, schedule="cosine", augment=("crop",))
    score_file = os.path.join(runs_dir, "el2n.npz")
    diet.score_run(ds, "el2n", score_file, recipe, m["score_runs"], m["score_epoch"], seed=0, overwrite=args.overwrite,
                   progress=progress)
    el2n = diet.load_scores(score_file)[0]

    def indices(method: str, n: int, seed: int) -> np.ndarray:
        """The training rows of a real subset: all, the highest EL2N (class-balanced), or random (balanced)."""
        if method == "full":
            return np.arange(n_train)
        if method == "EL2N":
            return prune.keep_highest(el2n, n / n_train, labels=ds.y_train, seed=seed)
        return np.sort(data.balanced_subset(jax.random.PRNGKey(seed), ds.y_train, num_classes, n // num_classes))

    def cells_of(point: dict) -> dict:
        """A point's set: a KIP or Label Solve run, or a real subset's KRR accuracy (a computed cell)."""
        method, n, seed = point["method"], point["n"], point["seed"]
        if method in ("KIP", "Label Solve"):
            common = dict(dataset=m["dataset"], data_dir=None if m["dataset"] == "digits" else args.data_dir,
                          kernel=KERNEL, ipc=n // num_classes, seed=seed)
            config = (run.DistillConfig(**common, steps=m["kip_steps"], learn_labels=True,
                                        target_batch=min(m["target_batch"], n_train), eval_every=m["kip_steps"])
                      if method == "KIP" else label_solve.LabelSolveConfig(**common))
            return {"set": (os.path.join("sets", f"{method.replace(' ', '_').lower()}-n{n}-seed{seed}"), config)}
        if method == "full" and not m["kernel_full"]:  # its kernel matrix does not fit this machine
            return {}
        idx = indices(method, n, seed)
        meta = {"dataset": ds.name, "kernel": KERNEL, "indices": idx.tolist() if len(idx) < n_train else "all"}
        compute = lambda: {"accuracy": np.array(krr_accuracy(x_train[idx], one_hot[idx])["test_accuracy"])}  # noqa: E731
        return {"krr": (os.path.join("krr", f"{method}-n{n}-seed{seed}.npz"), table.Computed(meta, compute))}

    def networks(row: dict) -> dict:
        """The set's KRR accuracy and its finite networks (kept in the networks cache)."""
        method, n, seed = row["method"], row["n"], row["seed"]
        if "set" in row:
            stored = io.read_npz(os.path.join(row["folders"]["set"], "distilled.npz"))
            images, labels, acc = stored["images"], stored["labels"], row["set"]["test_accuracy"]
        else:
            idx = indices(method, n, seed)
            images, labels = x_train[idx], one_hot[idx]
            acc = float(row["krr"]["accuracy"]) if "krr" in row else np.nan
        cache = os.path.join(runs_dir, "networks", f"{method.replace(' ', '_')}-n{n}-set{seed}")
        r = transfer.train_networks_stable(network, images, labels, x_test, ds.y_test, net_config,
                                           seeds=1 if method == "random" else m["seeds"], seed=seed, cache_dir=cache)
        print(f"  {method:>11} n={n:>6} set {seed}: KRR {'-' if np.isnan(acc) else f'{100 * acc:.2f}%'}, network "
              f"{100 * np.mean(r['test_accuracies']):.2f}% (lr {r['lr']:g}; {time.time() - started:.0f} s so far)")
        return {"kernel": acc, "network": r["test_accuracies"], "lr": r["lr"]}

    lr_text = lambda lrs: "/".join(f"{lr:g}" for lr in lrs)  # noqa: E731
    # one set per seed where the set itself is random; KIP, Label Solve and EL2N sets are made once
    points = [dict(method=method, n=n, seed=seed) for method, n in
              [("full", n_train)] + [(method, n) for n in sizes for method in METHODS if not (method == "KIP" and n > m["kip_max"])]
              for seed in (range(m["seeds"]) if method == "random" else [0])]
    try:
        rows = table.run_rows(points, cells_of, runs_dir, networks, progress=progress, overwrite=args.overwrite)
    except InputError as e:
        raise SystemExit(f"data_budget.py: error: {e}") from None
    results = {}  # (method, n) -> {"kernel": [...], "network": [...], "lr": [the lrs its networks trained at]}
    for r in rows:
        into = results.setdefault((r["method"], r["n"]), {"kernel": [], "network": [], "lr": []})
        into["kernel"].append(r["kernel"])
        into["network"] += list(r["network"])
        into["lr"] = sorted(set(into["lr"]) | {r["lr"]})

    def fmt(key, judge) -> str:
        if key not in results or np.all(np.isnan(results[key][judge])):
            return "-"
        mean, std = report.mean_std(results[key][judge])
        return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if len(results[key][judge]) > 1 else "")

    # one column per method and judge; the full training set's figures under the first method's
    columns = [table.Column("stored examples", lambda r: r["examples"]),
               *(table.Column(f"{meth} ({name})", lambda r, key=(meth, judge): r.get(key, ""))
                 for judge, name in (("kernel", "KRR"), ("network", "network")) for meth in METHODS)]
    shown = [{"examples": str(n), **{(meth, judge): fmt((meth, n), judge) for meth in METHODS for judge in ("kernel", "network")}}
             for n in sizes]
    shown.append({"examples": f"{n_train} (full)", **{(METHODS[0], judge): fmt(("full", n_train), judge)
                                                       for judge in ("kernel", "network")}})
    name = f"data_budget_{m['dataset']}" + ("_quick" if args.quick else "")
    for judge, label in (("kernel", f"KRR, {KERNEL} NTK"), ("network", f"fc1 network (width {NET_WIDTH})")):
        curves = {meth: [(n, *report.mean_std(results[meth, n][judge])) for n in sizes if (meth, n) in results]
                  for meth in METHODS}
        full = report.mean_std(results["full", n_train][judge]) if judge == "network" or m["kernel_full"] else None
        plots.accuracy_curves(os.path.join(args.results_dir, f"{name}_{judge}.png"), curves, "stored training examples",
                              f"{ds.name}: {label}", full=full, log_x=True)
    minutes = (time.time() - started) / 60
    reduced = ", ".join(f"{meth} n={n}: lr {lr_text(r['lr'])}" for (meth, n), r in results.items()
                        if r["lr"] != [net_config.lr])
    body = table.markdown(columns, shown) + f"""

{ds.name} test accuracy (%, {len(ds.y_test)} test images) against the number of training examples kept.
- KIP: `kip distill --kernel {KERNEL} --learn-labels`, {m['kip_steps']} steps, target batch {min(m['target_batch'], n_train)},
  Adam 0.04, from a class-balanced real init (seed 0); up to {m['kip_max']} examples (its step costs O(n^3) in the support).
- Label Solve: `kip label-solve --kernel {KERNEL}` on a class-balanced real support (seed 0), labels fitted to all {n_train} training images.
- EL2N: the highest EL2N scores, class-balanced (each class in proportion), scores of a width-16 ConvNet at epoch
  {m['score_epoch']} of a {m['score_epochs']}-epoch schedule, averaged over {m['score_runs']} run(s) (`kip.diet.score_run`).
- random: a class-balanced random subset; {m['seeds']} subset(s) (seeds 0..{m['seeds'] - 1}), one network each.
- KRR: kernel ridge regression with the {KERNEL} NTK on the set (centred one-hot labels for real subsets), ridge 1e-6 x trace.
{'' if m['kernel_full'] else f'  Not run on the full {n_train}-example set (its {n_train}^2 kernel does not fit this machine).' + chr(10)}- network: fc1 of width {NET_WIDTH}, standard parameterization, MSE on the set's labels, SGD momentum 0.9, lr 0.1 on a
  cosine decay (lr 0.01, then 0.001, where a network's loss became NaN/inf: {reduced or 'none needed'}), L2 1e-3, batch 100, {m['net_steps']} steps whatever the set size (the full set gets the same steps);
  {m['seeds']} network(s) per KIP / Label Solve / EL2N / full set (mean ± std), one per random subset.
- Images standardised per channel with the full training set's statistics. Total time {minutes:.0f} min on this machine
  (cached cells count only when they ran). Plots: {name}_kernel.png, {name}_network.png.
"""
    report.write_results(name, f"Data budget on {ds.name}: accuracy against stored examples", body,
                         {"mode": mode, "settings": m, "sizes": sizes,
                          "results": [{"method": k[0], "n": k[1], **v} for k, v in results.items()]},
                         results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
