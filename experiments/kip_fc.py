"""ICLR 2021 KIP table, FC kernels: KIP-FC with learned labels at 1 / 10 / 50 images per
class, KRR test accuracy on the full test set, beside the published figures.

    python experiments/kip_fc.py --data-dir ../shared/datasets                  # MNIST, full
    python experiments/kip_fc.py --data-dir ../shared/datasets --ipc 1 10 --steps 4000 10000 --seeds 3
    python experiments/kip_fc.py --data-dir ../shared/datasets --ipc 50 --seeds 1 --first-seed 2  # seed 2 alone
    python experiments/kip_fc.py --data-dir ../shared/datasets --dataset cifar10_jpeg_lossy --ipc 10
    python experiments/kip_fc.py --quick                                         # digits, seconds

Each cell is a `kip distill` run in runs/kip_fc/ (reused when done, resumed when
interrupted), one per distillation seed (--seeds: its own real start); also the real-image
baseline (the initial support, 0 steps) and Label Solve on that same support. Rows pool the
seeds (mean ± std). Writes results/kip_fc_<dataset>.{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure(x64=True)  # an entry point: before numpy, scipy and JAX load; kernel runs solve in float64

import argparse

import jax
import numpy as np

from kip import InputError, data, krr, label_solve, report, run, table

# arXiv 2107.13034 Table 1, KIP-FC kernel (KRR) accuracy (%), by images per class.
PUBLISHED = {"mnist": {1: 85.5, 10: 97.2, 50: 98.4}, "cifar10": {1: 40.5, 10: 53.1, 50: 58.6}}
DISPLAY = {"mnist": "MNIST", "cifar10_jpeg_lossy": "CIFAR-10 (JPEG copy)", "digits": "digits (sklearn)"}


def published(dataset: str) -> dict:
    return PUBLISHED.get("cifar10" if dataset.startswith("cifar10") else dataset, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--steps", type=int, nargs="+", default=[4000, 10000, 10000],
                        help="KIP steps: one for all, one per --ipc value, or one per (--kernel, --ipc) pair, kernel-major")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="distillation seeds (each its own real start): one for all, or one per --ipc value")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed's number (seeds K, K+1, ...): one process per core, sharing --runs-dir")
    parser.add_argument("--target-batch", type=int, default=5000)
    parser.add_argument("--kernel", nargs="+", default=["fc1"], help="one row group per kernel")
    parser.add_argument("--zca", action="store_true")
    parser.add_argument("--precision", default="float64", choices=("float64", "float32"))
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--runs-dir", default="runs/kip_fc")
    parser.add_argument("--results-dir", default=report.RESULTS)
    parser.add_argument("--name", default=None, help="results file name (default: kip_fc_<dataset>)")
    parser.add_argument("--quick", action="store_true",
                        help="digits, 10 per class (unless --ipc), 200 steps, 2 seeds (unless --seeds): a smoke run")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace cells of --runs-dir that hold runs of other options")
    args = report.parse_args(parser)
    if args.quick:
        args.dataset, args.data_dir, args.steps, args.eval_every = "digits", None, [200], 100
        # --ipc not given (`is`: an explicit --ipc of the default sizes stays): one size, each recompiles
        if args.ipc is parser.get_default("ipc"):
            args.ipc = [10]
        if args.seeds is parser.get_default("seeds"):
            args.seeds = [2]
    pairs = [(k, i) for k in args.kernel for i in args.ipc]
    if len(args.steps) not in (1, len(args.ipc), len(pairs)):
        parser.error(f"--steps takes 1, {len(args.ipc)} (one per --ipc) or {len(pairs)} (one per kernel and ipc) values")
    steps = dict(zip(pairs, args.steps * len(pairs) if len(args.steps) == 1 else
                     args.steps * len(args.kernel) if len(args.steps) == len(args.ipc) else args.steps))
    if len(args.seeds) not in (1, len(args.ipc)) or min(args.seeds) < 1:
        parser.error(f"--seeds takes 1 or {len(args.ipc)} (one per --ipc) values, each at least 1")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    counts = dict(zip(args.ipc, args.seeds * len(args.ipc) if len(args.seeds) == 1 else args.seeds))
    seeds = {ipc: range(args.first_seed, args.first_seed + n) for ipc, n in counts.items()}

    ds = data.load(args.dataset, args.data_dir)
    problems = {}

    def cells_of(point: dict) -> dict:
        """Per seed: the KIP run (its time counted in CPU-seconds, which other jobs on the machine
        barely change) and Label Solve on the same real start."""
        kernel, ipc = point["kernel"], point["ipc"]
        named = {}
        for seed in seeds[ipc]:
            folder = f"{args.dataset}-{kernel}{'-zca' if args.zca else ''}-ipc{ipc}-seed{seed}"
            named[f"kip{seed}"] = (folder, run.DistillConfig(
                dataset=args.dataset, data_dir=args.data_dir, kernel=kernel, ipc=ipc, seed=seed, steps=steps[kernel, ipc],
                target_batch=args.target_batch, learn_labels=True, zca=args.zca, precision=args.precision,
                eval_every=args.eval_every, clock="cpu"))
            named[f"label_solve{seed}"] = (folder + "-label-solve", label_solve.LabelSolveConfig(
                dataset=args.dataset, data_dir=args.data_dir, kernel=kernel, ipc=ipc, seed=seed, zca=args.zca,
                precision=args.precision))
        return named

    def of_seeds(row: dict, cell: str, key: str) -> list:
        return [row[f"{cell}{seed}"][key] for seed in seeds[row["ipc"]]]

    def uniform_random(row: dict) -> dict:
        """The baseline without class balance: a uniformly random subset of the same size (one per
        seed; it may miss classes), with centred one-hot labels, by KRR with the row's kernel."""
        if row["kernel"] not in problems:
            problem = run.prepare(ds, row["kernel"], args.zca, args.precision)
            problems[row["kernel"]] = problem, run.make_evaluator(problem, krr.DEFAULT_REG, krr.DEFAULT_BLOCK)
        problem, evaluate = problems[row["kernel"]]
        n = row["ipc"] * ds.num_classes
        accs, classes = [], []
        for seed in seeds[row["ipc"]]:
            idx = np.asarray(jax.random.choice(jax.random.PRNGKey(seed), len(ds.y_train), (n,), replace=False))
            acc = evaluate(problem.x_train[idx], data.one_hot(ds.y_train[idx], ds.num_classes, dtype=problem.dtype))
            accs.append(acc["test_accuracy"])
            classes.append(int(len(np.unique(ds.y_train[idx]))))
        return {"published": published(args.dataset).get(row["ipc"]), "uniform_random": accs,
                "uniform_random_classes": min(classes)}

    try:
        rows = table.run_rows(table.grid(kernel=args.kernel, ipc=args.ipc), cells_of, args.runs_dir, uniform_random,
                              progress=not args.no_progress, overwrite=args.overwrite)
    except InputError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")

    name = DISPLAY.get(args.dataset, args.dataset)
    columns = [
        table.Column("kernel", lambda r: r["kernel"]), table.Column("images/class", lambda r: str(r["ipc"])),
        table.Column("published KIP-FC", lambda r: f"{r['published']:.1f}" if r["published"] else "-"),
        table.Column("ours: KIP, learned labels", lambda r: f"**{report.percent(of_seeds(r, 'kip', 'test_accuracy'), 2)}**"),
        table.Column("distillation seeds", lambda r: str(len(seeds[r["ipc"]]))),
        table.Column("steps", lambda r: str(r[f"kip{seeds[r['ipc']][0]}"]["steps"])),
        table.Column("CPU-s / run", lambda r: f"{np.mean(of_seeds(r, 'kip', 'seconds')):.0f}"),
        table.Column("class-balanced real images (KIP's init)",
                     lambda r: report.percent(of_seeds(r, "kip", "initial_test_accuracy"), 2)),
        table.Column("Label Solve on those images", lambda r: report.percent(of_seeds(r, "label_solve", "test_accuracy"), 2)),
        table.Column("uniform random real subset", lambda r: report.percent(r["uniform_random"], 2) + (
            f" (as few as {r['uniform_random_classes']} classes)" if r["uniform_random_classes"] < ds.num_classes else "")),
    ]
    numbers = sorted({s for r in seeds.values() for s in r})
    here = f" (here seed{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))})" if args.first_seed else ""
    body = table.markdown(columns, rows) + f"""

{name}, kernels {', '.join(args.kernel)} (NTK, W_std = sqrt 2, b_std = 0.1), {'ZCA' if args.zca else 'standardised'} inputs,
KRR test accuracy (%) on the full test set ({rows[0][f"kip{seeds[rows[0]['ipc']][0]}"]['test_size']} images), target batch
{args.target_batch}, Adam 0.04, {args.precision}; mean ± std over the distillation seeds{here} (each its own
class-balanced real start; KRR trains no network, so there are no network seeds). "CPU-s / run": the
KIP run's process CPU time (all its threads), which other jobs on the machine barely change.
Published: Nguyen et al., arXiv 2107.13034, Table 1.
Baselines, same kernel and size: the class-balanced real images KIP starts from, Label Solve on
them (labels fitted to the whole training set), and uniformly random real subsets (one per seed, not
class-balanced: at 1 image per class they may miss classes) with centred one-hot labels.
Runs (distilled sets, curves, support grids) in {args.runs_dir}/.
"""
    report.write_results(args.name or f"kip_fc_{args.dataset}" + ("_quick" if args.quick else ""),
                         f"KIP-FC on {name}: KRR test accuracy against the published figures", body,
                         {"rows": table.without_curves(rows), "args": vars(args)}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
