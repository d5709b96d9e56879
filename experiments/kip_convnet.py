"""NeurIPS 2021 KIP-ConvNet table on a CPU: KIP with the random-feature ConvNet3 kernel
(rf-convnet3, RFAD-style) at 1 and 10 images per class, KRR test accuracy on the full test set
beside the published KIP-ConvNet kernel figures.

    python experiments/kip_convnet.py --data-dir ../shared/datasets            # MNIST, <= 60 min per run on 2 cores
    python experiments/kip_convnet.py --quick                                   # digits, minutes
    python experiments/kip_convnet.py --data-dir ../shared/datasets --ipc 1 --loss platt --eval rf exact \
        --name kip_convnet_mnist_platt                                          # RFAD's Platt loss: 94.75 at 1/class
    python experiments/kip_convnet.py --data-dir ../shared/datasets --kernel convnet3 --precision float32 --ipc 1 \
        --target-batch 20 --steps 300 --eval-every 300 --eval exact rf --name kip_convnet_mnist_exact   # exact NTK, 14 min
    python experiments/kip_convnet.py --data-dir ../shared/datasets --ipc 1 --steps 1000 --target-batch 500 --loss platt \
        --val-size 5000 --name kip_convnet_mnist_60min_rf                       # a random-feature set, 5000 images held out
    python experiments/kip_convnet.py --data-dir ../shared/datasets --kernel convnet3 --precision float32 --ipc 1 \
        --steps 500 --target-batch 50 --loss platt --lr 0.003 0.01 0.03 --val-size 5000 --init-from runs/kip_convnet/RF_CELL \
        --eval exact --eval-every 500 --name kip_convnet_mnist_60min_finetune   # then fine-tuned under the exact NTK, the
                                                                                # lr chosen on those held-out images

Each cell is a `kip distill` run in runs/kip_convnet/ (reused when done, resumed when interrupted),
one per distillation seed (--seeds: each its own real start and target batches; rows pool them,
mean ± std, and several --lr values are chosen by their mean final validation accuracy).
The final evaluation kernel is --eval: 'rf' (an estimate from --eval-models networks, fixed seed)
or 'exact' (the exact ConvNet3 NTK: ~10^4 pairs per support image on MNIST's test set).
Writes results/kip_convnet_<dataset>.{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure(x64=True)  # an entry point: before numpy, scipy and JAX load; kernel runs solve in float64

import argparse
import dataclasses
import os
from typing import Callable

import numpy as np

from kip import InputError, io, report, run, table

# arXiv 2107.13034 Table 1, KIP-ConvNet kernel (KRR) accuracy (%), by images per class.
PUBLISHED = {"mnist": {1: 96.5, 10: 99.1, 50: 99.5}, "fashion_mnist": {1: 76.7, 10: 88.8, 50: 91.0},
             "cifar10": {1: 63.4, 10: 75.5, 50: 79.7}}
DEFAULT_LR = run.DistillConfig.lr  # the authors' Adam learning rate


def evaluated(cell: str, options: run.KernelOptions, args: argparse.Namespace) -> dict:
    """KRR test accuracy of the cell's distilled set under `options`, kept in the cell folder (the
    many-model and exact evaluations take minutes) and reused while the run is unchanged."""
    done = io.read_json(os.path.join(cell, "metrics.json"))
    meta = {"kernel": dataclasses.asdict(options), "steps": done["steps"], "config": done["config"], "zca": args.zca}
    result = io.cached(os.path.join(cell, f"eval-{options.name}.npz"), meta, lambda: {
        k: np.asarray(v) for k, v in run.evaluate_run(os.path.join(cell, "distilled.npz"), args.dataset, args.data_dir,
                                                      options).items()}, overwrite=args.overwrite)  # the file's own preprocessing
    return {k: v.item() for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 500], help="one per --ipc value (or one for all)")
    parser.add_argument("--target-batch", type=int, nargs="+", default=[500], help="one per --ipc value (or one for all)")
    parser.add_argument("--kernel", default="rf-convnet3", choices=("rf-convnet3", "convnet3"),
                        help="KIP's kernel: random features (default) or the exact ConvNet3 NTK (small --target-batch)")
    parser.add_argument("--precision", default="float64", choices=("float32", "float64"),
                        help="the exact kernel's dtype (random features always compute in float32)")
    parser.add_argument("--rf-models", type=int, default=4)
    parser.add_argument("--rf-width", type=int, default=128)
    parser.add_argument("--loss", default="mse", choices=("mse", "platt"))
    parser.add_argument("--lr", type=float, nargs="+", default=[DEFAULT_LR],
                        help="Adam learning rate (default: %(default)s, the authors'); several: a run each, the one with "
                             "the best final validation accuracy reported (needs --val-size)")
    parser.add_argument("--seeds", type=int, default=1, help="distillation seeds per size and lr (each its own real start)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the seeds are FIRST .. FIRST + N - 1: seeds can run in separate processes (one per core), "
                             "and a later call naming all of them pools their finished cells (default: %(default)s)")
    parser.add_argument("--val-size", type=int, default=0,
                        help="training images held out of KIP's targets (none of the set's sources), on which an lr is chosen")
    parser.add_argument("--init-from", default=None, metavar="RUN",
                        help="fine-tune: start from this run folder's distilled.npz (e.g. a random-feature run, with "
                             "--kernel convnet3) instead of real images; one --ipc value")
    parser.add_argument("--zca", action="store_true")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval", nargs="+", default=["rf"], choices=("rf", "exact"),
                        help="final evaluation kernels: rf (many-model estimate) and/or exact ConvNet3 NTK")
    parser.add_argument("--exact-max-ipc", type=int, default=1,
                        help="the exact evaluation only up to this many images per class (its cost grows with the support)")
    parser.add_argument("--eval-models", type=int, default=8)
    parser.add_argument("--eval-width", type=int, default=256)
    parser.add_argument("--runs-dir", default="runs/kip_convnet")
    parser.add_argument("--name", default=None, help="results file name (default: kip_convnet_<dataset>)")
    parser.add_argument("--results-dir", default=report.RESULTS)
    parser.add_argument("--quick", action="store_true", help="digits, 10 per class (unless --ipc), 30 steps: a smoke run")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace cells of --runs-dir (runs, evaluations) that hold results of other options")
    args = report.parse_args(parser)
    if args.quick:  # small enough for CI's suite: it checks the script, not KIP
        args.dataset, args.data_dir, args.steps, args.target_batch, args.eval_every = "digits", None, [30], [200], 15
        args.rf_models, args.rf_width, args.eval_models, args.eval_width = 2, 32, 4, 64
        # --ipc not given (`is`: an explicit --ipc of the default sizes stays): one size, each recompiles
        if args.ipc is parser.get_default("ipc"):
            args.ipc = [10]
    for flag in ("steps", "target_batch"):
        if len(getattr(args, flag)) not in (1, len(args.ipc)):
            parser.error(f"--{flag.replace('_', '-')}: give one value, or one per --ipc value ({len(args.ipc)})")
    steps, target_batch = ({ipc: v[i % len(v)] for i, ipc in enumerate(args.ipc)} for v in (args.steps, args.target_batch))
    kernel, exact = args.kernel, args.kernel == "convnet3"
    if args.init_from and len(args.ipc) != 1:
        parser.error("--init-from: give one --ipc value (that of the run it starts from)")
    if args.seeds < 1 or (args.init_from and args.seeds != 1):
        parser.error("--seeds: at least 1, and 1 with --init-from (every seed would fine-tune the same set)")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    seed_range = range(args.first_seed, args.first_seed + args.seeds)
    init_from = os.path.join(args.init_from, "distilled.npz") if args.init_from else None

    if len(args.lr) > 1 and not args.val_size:
        parser.error("several --lr values need --val-size: the choice is made on held-out training images, never on the test set")

    def folder(ipc: int, point_lr: float, seed: int) -> str:
        setting = f"{args.precision}-tb{target_batch[ipc]}" if exact else f"{args.rf_models}x{args.rf_width}"
        start = f"-from-{os.path.basename(os.path.normpath(args.init_from))}" if args.init_from else ""
        lr = "" if point_lr == DEFAULT_LR else f"-lr{point_lr:g}"
        val = f"-val{args.val_size}" if args.val_size else ""
        return f"{args.dataset}-{kernel}-{setting}{'-zca' if args.zca else ''}-{args.loss}-ipc{ipc}{start}{lr}{val}-seed{seed}"

    def evals_wanted(ipc: int) -> list[str]:
        return [e for e in args.eval if not (e == "exact" and ipc > args.exact_max_ipc)]

    def cells_of(point: dict) -> dict:
        ipc = point["ipc"]
        config = run.DistillConfig(
            dataset=args.dataset, data_dir=args.data_dir, kernel=kernel, ipc=ipc, seed=point["seed"], steps=steps[ipc],
            target_batch=target_batch[ipc], learn_labels=True, zca=args.zca, eval_every=args.eval_every,
            rf_models=args.rf_models, rf_width=args.rf_width, loss=args.loss, precision=args.precision, init_from=init_from,
            lr=point["lr"], val_size=args.val_size)
        named = {"kip": (folder(ipc, point["lr"], point["seed"]), config)}
        if any(not (e == "exact" and exact) for e in evals_wanted(ipc)):
            # the same run at 0 steps: the images it started from (real, or --init-from's), evaluated like the distilled
            # ones. No step uses the lr, so every lr's row shares this one cell (at the default lr's name and options).
            named["init"] = (folder(ipc, DEFAULT_LR, point["seed"]) + "-init", dataclasses.replace(config, steps=0, lr=DEFAULT_LR))
        return named

    def evaluations(row: dict) -> dict:
        ipc, kip = row["ipc"], row["kip"]
        cell = row["folders"]["kip"]
        evals, baseline = {}, {}
        for which in evals_wanted(ipc):
            if which == "exact" and exact:  # the run's own evaluations already are these (step 0: the set it started from)
                evals[which] = {k: kip[k] for k in ("test_accuracy", "test_mse")}
                baseline[which] = {"test_accuracy": kip["initial_test_accuracy"]}
                continue
            options = (run.KernelOptions("rf-convnet3", args.eval_models, args.eval_width, seed=12345) if which == "rf"
                       else run.KernelOptions("convnet3"))
            evals[which], baseline[which] = (evaluated(c, options, args) for c in (cell, row["folders"]["init"]))
        return {"target_batch": target_batch[ipc], "published": PUBLISHED.get(args.dataset, {}).get(ipc),
                "evals": evals, "real_images": baseline}

    try:
        runs = table.run_rows(table.grid(ipc=args.ipc, lr=args.lr, seed=seed_range), cells_of, args.runs_dir,
                              evaluations, progress=not args.no_progress, overwrite=args.overwrite)
    except InputError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    # one row per size: the seeds of its only lr, or of the lr whose sets have the best mean final validation accuracy
    by_lr = table.groups(runs, lambda r: (r["ipc"], r["lr"]))
    mean_val = {key: float(np.mean([r["kip"].get("val_accuracy", 0.0) for r in rs])) for key, rs in by_lr}
    rows = []
    for ipc in args.ipc:
        (_, lr), seeds = max(((key, rs) for key, rs in by_lr if key[0] == ipc), key=lambda kv: mean_val[kv[0]])
        rows.append({"ipc": ipc, "lr": lr, "seeds": seeds, "published": seeds[0]["published"],
                     "target_batch": target_batch[ipc], "tried": {f"{k[1]:g}": v for k, v in mean_val.items() if k[0] == ipc}})

    def over_seeds(r: dict, value: Callable[[dict], float]) -> str:
        return report.percent([value(x) for x in r["seeds"]], 2)

    start_note = f"the set it started from: {init_from}" if init_from else "real images it started from"
    names = {"rf": f"rf-convnet3 estimate ({args.eval_models} x width {args.eval_width}, other networks)",
             "exact": "exact ConvNet3 NTK"}

    def accuracy(which: str) -> Callable[[dict], str]:
        return lambda r: (f"**{over_seeds(r, lambda x: x['evals'][which]['test_accuracy'])}** "
                          f"({over_seeds(r, lambda x: x['real_images'][which]['test_accuracy'])})"
                          if which in r["seeds"][0]["evals"] else "-")

    columns = [table.Column("images/class", lambda r: str(r["ipc"])),
               table.Column("published KIP-ConvNet (kernel)", lambda r: f"{r['published']:.1f}" if r["published"] else "-"),
               *(table.Column(f"ours, {names[e]}: KIP ({start_note})", accuracy(e)) for e in args.eval),
               table.Column(f"during the run (its own {'exact' if exact else 'rf'} kernel)",
                            lambda r: over_seeds(r, lambda x: x["kip"]["test_accuracy"])),
               table.Column("distillation seeds", lambda r: str(len(r["seeds"]))),
               table.Column("steps", lambda r: str(r["seeds"][0]["kip"]["steps"])),
               table.Column("target batch", lambda r: str(r["target_batch"])),
               table.Column("time (min) / run", lambda r: f"{np.mean([x['kip']['seconds'] for x in r['seeds']]) / 60:.1f}")]
    if args.val_size:
        def lr_choice(r: dict) -> str:
            chosen = f"{r['lr']:g}"
            return ", ".join(f"**{lr}: {100 * v:.2f}**" if lr == chosen else f"{lr}: {100 * v:.2f}" for lr, v in r["tried"].items())

        columns += [table.Column("Adam lr: final validation accuracy (chosen)", lr_choice),
                    table.Column("best validation (step): its test accuracy", lambda r: "; ".join(
                        f"{100 * x['kip']['best_val']['val_accuracy']:.2f} ({x['kip']['best_val']['step']}): "
                        f"{100 * x['kip']['best_val']['test_accuracy']:.2f}" for x in r["seeds"]))]
    validation_note = "" if not args.val_size else f"""
Validation: {args.val_size} training images held out of KIP's targets (none of the sets' sources; their
indices are in each distilled.npz as val_indices), judged by KRR at every evaluation: the lr is the
one with the best final validation accuracy; the best evaluation by it is reported apart, with its step."""
    body = table.markdown(columns, rows) + f"""

{args.dataset}, KIP with {kernel}: {f'the exact ConvNet3 NTK in {args.precision}' if exact else
f'{args.rf_models} random ConvNet3s of width {args.rf_width} drawn afresh every step (float32 features, float64 Gram matrix and solve)'},
learned labels, {args.loss} loss, Adam {', '.join(f'{lr:g}' for lr in args.lr)}{' (the final validation accuracy chose)' if len(args.lr) > 1 else ''},{f' fine-tuning {init_from},' if init_from else ''}
ridge 1e-6 x tr(K)/n, {'ZCA' if args.zca else 'standardised'} inputs.{validation_note}
Test accuracy of KRR on the full test set ({rows[0]['seeds'][0]['kip']['test_size']} images), mean ± std over
the distillation seeds{f" (here seed{'s' * (len(seed_range) > 1)} {', '.join(map(str, seed_range))})" if args.first_seed else ''} where there are several (each its own real start and target batches; the
validation accuracies that choose an lr are their means). Published: Nguyen et al.,
arXiv 2107.13034, Table 1 (exact ConvNet kernels, hundreds of accelerators, to convergence).
Runs (distilled sets, curves) in {args.runs_dir}/.
"""
    report.write_results(args.name or f"kip_convnet_{args.dataset}" + ("_quick" if args.quick else ""),
                         f"KIP-ConvNet ({'exact kernel' if exact else 'random features'}) on {args.dataset}: KRR test accuracy against the published figures",
                         body, {"rows": [{**r, "seeds": table.without_curves(r["seeds"])} for r in rows], "args": vars(args)}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
