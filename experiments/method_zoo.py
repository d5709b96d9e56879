"""Every distillation method of kip at equal compute: KIP (random features and exact), Label
Solve, DC, DSA, DM, DD, MTT and FRePo on MNIST, each run once per seed under a budget of CPU time
(on the GPU: wall time) and read after 2, 6 and 20 minutes of distillation (1 image per class, 2 seeds;
10 per class at 20 minutes, 1 seed), every reading judged the same way: by the `dsa` protocol's
finite networks beside same-protocol random real subsets, and by KRR under one common kernel.

    python experiments/method_zoo.py --data-dir ../shared/datasets        # CPU: MNIST, the budgets above
    python experiments/method_zoo.py --data-dir ../shared/datasets --ipc 1 --methods frepo mtt
    python experiments/method_zoo.py --data-dir ../shared/datasets --ipc 1 --methods dm --seeds 1 --first-seed 1   # seed 1 alone
    python experiments/method_zoo.py --gpu --data-dir ../shared/datasets  # the same table at the papers' widths
    python experiments/method_zoo.py --gpu --dataset cifar10              # CIFAR-10 (TFDS) beside its published figures
    python experiments/method_zoo.py --quick                              # digits, seconds-long budgets
    python experiments/method_zoo.py --data-dir ../shared/datasets --kept-only   # the table of the kept, judged cells, training nothing

Configuration only. Each method's run is a cell (`kip.cells.distill_cell`: reused when done,
resumed when interrupted) distilling until its steps took the largest budget (`max_seconds`:
compilation included, evaluations and checkpoints not) and keeping its set at every checkpoint
with the seconds spent (`snapshots`); a reading at budget B is the last set kept within B
seconds. MTT's experts (`kip trajectories`) are recorded first, in --runs-dir/experts, and their
training time is stated apart. Writes results/method_zoo_<dataset>.{md,json,png}.
"""

from __future__ import annotations

from kip import entry

entry.configure(x64=True)  # an entry point: KIP's and the KRR evaluation's float64 solves

import dataclasses
import json
import os

import numpy as np

from kip import InputError, cells, io, label_solve, method_run, plots, protocols, report, run, table, trajectories, transfer

ALL = ("kip-rf", "kip-exact", "label-solve", "dc", "dsa", "dm", "dd", "mtt", "frepo", "frepo-lr", "frepo-net")
NAMES = {"kip-rf": "KIP (random features)", "kip-exact": "KIP (exact kernel)", "label-solve": "Label Solve",
         "dc": "DC", "dsa": "DSA", "dm": "DM", "dd": "DD", "mtt": "MTT", "frepo": "FRePo",
         "frepo-lr": "FRePo (image lr on validation)", "frepo-net": "FRePo (own network)"}
# a row that runs another method at other settings: the method it runs
RUNS_AS = {"frepo-lr": "frepo", "frepo-net": "frepo"}
FREPO_ROWS = ("frepo", "frepo-lr", "frepo-net")
# FRePo's image lr for short budgets, chosen on a validation split (results/frepo_lr_mnist.md: 3e-4,
# its paper's, 3e-3 and 3e-2, 6 CPU-minutes each at 1 per class): its paper's lr is set for 500k steps
FREPO_SHORT_LR = 3e-3
STEP_CAP = 1_000_000  # the budget ends the runs, not --steps

_KIP_RF = dict(kernel="rf-convnet3", rf_models=4, rf_width=128, target_batch=500, learn_labels=True, loss="platt")
# method -> (run options, steps per checkpoint: each reading point ~10-20 s of this CPU's steps)
CPU_METHODS = {
    "kip-rf": (_KIP_RF, 5),
    "kip-exact": (dict(kernel="convnet3", precision="float32", target_batch=50, learn_labels=True), 5),
    "label-solve": (dict(kernel="rf-convnet3", rf_models=4, rf_width=128, target_size=10000), None),
    "dc": (dict(width=64, real_batch=64), 10), "dsa": (dict(width=64, real_batch=64), 10),
    "dm": (dict(width=64, real_batch=64), 50), "dd": (dict(width=64, real_batch=64), 10),
    # starts in the experts' first epochs (MTT at 1 per class on CIFAR-10: max_start_epoch 2)
    "mtt": (dict(syn_steps=20, expert_epochs=2, max_start_epoch=4, lr=100.0), 10),
    "frepo": (dict(width=64), 20),
    "frepo-lr": (dict(width=64, lr=FREPO_SHORT_LR), 20),
    # FRePo's own distillation network (width x 1, 2, 4 channels, batch norm) at width 32: at its paper's
    # width 128 a step takes ~4 CPU-s here, ~300 steps in 20 minutes (results/frepo_net_mnist.md)
    "frepo-net": (dict(width=32, pool_net="frepo", lr=FREPO_SHORT_LR), 20),
}
# at 10 per class DC's loops (10 matching steps, 50 inner epochs) take a minute per iteration here
CPU_SIZE_METHODS = {10: {"dc": (dict(width=64, real_batch=64, outer_loop=10, inner_loop=10), 1),
                         "dsa": (dict(width=64, real_batch=64, outer_loop=10, inner_loop=10), 1)}}
QUICK_METHODS = {
    "kip-rf": (dict(kernel="rf-fc1", rf_models=2, rf_width=16, target_batch=50, learn_labels=True, loss="platt"), 2),
    "kip-exact": (dict(kernel="fc1", target_batch=50), 2),
    "label-solve": (dict(kernel="fc1", target_size=200), None),
    **{m: (dict(width=8, real_batch=8), 2) for m in ("dc", "dsa", "dm", "dd")},
    "mtt": (dict(syn_steps=2, expert_epochs=1, max_start_epoch=1, lr=10.0), 2),
    "frepo": (dict(width=8, real_batch=8, pool_size=2, max_age=4), 2),
    "frepo-lr": (dict(width=8, real_batch=8, pool_size=2, max_age=4, lr=FREPO_SHORT_LR), 2),
    "frepo-net": (dict(width=8, real_batch=8, pool_size=2, max_age=4, lr=FREPO_SHORT_LR, pool_net="frepo"), 2),
}
# the card's lr grid shifted down: at width 128 for 1000 steps lr 0.1 diverged and 0.01, the card's
# lowest, was best on validation for KIP's set (a best choice at the grid's edge)
KERNEL_LABEL_METHODS = ("kip-rf", "kip-exact", "label-solve")  # judged under the kip card too
_KIP_OWN_CPU = dict(model="convnet3", width=128, steps=1000, networks=2, baseline_subsets=3, tune_lr=[0.001, 0.003, 0.01, 0.03],
                   tune_weight_decay=[1e-3])
LEARNED_LR = "learned"  # an own protocol's lr: the one its method learned with the set
# MTT's own evaluation (its paper): the zoo's protocol and networks, at the lr MTT learned with the set
MTT_OWN = ("dsa", {"lr": LEARNED_LR})
MODES = {
    # at 10 per class one network per set and 2 random subsets, as experiments/matching.py (whose
    # random subsets' networks these share through the networks cache)
    # budgets in this process's CPU seconds (loop.CLOCKS): equal compute while the machine is shared
    "cpu": dict(dataset="mnist", protocol="dsa", clock="cpu", evaluation=dict(networks=2),
                size_evaluation={1: dict(baseline_subsets=5), 10: dict(networks=1, baseline_subsets=2)},
                krr=dict(kernel="rf-convnet3", rf_models=4, rf_width=128), sizes={1: (2, (2, 6, 20)), 10: (1, (20,))},
                # experts within the 1 CPU-hour: an epoch of MNIST (235 SGD steps with DSA) takes
                # ~3 CPU-minutes at width 64 on one core here, so 3 experts x 6 epochs
                experts=dict(experts=3, epochs=6, width=64), methods=CPU_METHODS, size_methods=CPU_SIZE_METHODS,
                # the final sets of the methods that learn labels also under their own evaluation (their
                # labels, MSE): FRePo's Conv at its width; KIP's and Label Solve's finite ConvNet3 (the
                # kernel's network) at width 128 for 1000 steps, lr chosen on validation (CPU)
                own={**{k: ("frepo", dict(networks=2, baseline_subsets=3)) for k in FREPO_ROWS}, "mtt": MTT_OWN,
                     **{k: ("kip", _KIP_OWN_CPU) for k in KERNEL_LABEL_METHODS}},
                # at 10 per class the kip card's lr grid trains 4 x (2 + 3) networks of 100 images per set
                # (~10 CPU-minutes each here, ~3 CPU-hours per method): FRePo's and MTT's only
                own_sizes={10: (*FREPO_ROWS, "mtt")}),
    "gpu": dict(dataset="mnist", protocol="dsa", clock="wall", evaluation=dict(networks=10),
                size_evaluation={k: dict(baseline_subsets=5) for k in (1, 10)},
                krr=dict(kernel="convnet3"), sizes={1: (3, (2, 6, 20)), 10: (3, (20,))},
                experts=dict(experts=20, epochs=30), methods={**{m: (dict(o, width=128) if "width" in o else o, c)
                                                                  for m, (o, c) in CPU_METHODS.items()}},
                size_methods={}, own={**{k: ("frepo", {}) for k in FREPO_ROWS}, "mtt": MTT_OWN, **{k: ("kip", dict(model="convnet3"))
                                                                  for k in KERNEL_LABEL_METHODS}}),
    "quick": dict(dataset="digits", protocol="dsa", clock="cpu", evaluation=dict(networks=1, width=8, epochs=20),
                  size_evaluation={1: dict(baseline_subsets=2)}, krr=dict(kernel="fc1"), sizes={1: (1, (0.05, 0.15))},
                  experts=dict(experts=1, epochs=2, width=8), methods=QUICK_METHODS, size_methods={},
                  own={**{k: ("frepo", dict(networks=1, baseline_subsets=1, width=8, steps=20)) for k in FREPO_ROWS},
                       "mtt": MTT_OWN}),
}


def config_for(method: str, options: dict, chunk: int | None, m: dict, data_dir: str | None, ipc: int, seed: int,
               budget: float, experts: str):
    """The cell's config: KIP a `run.DistillConfig`, Label Solve a `label_solve.LabelSolveConfig`, the rest a
    `method_run.MethodConfig`; every stepped run capped by `budget` seconds, keeping snapshots."""
    common = dict(dataset=m["dataset"], data_dir=data_dir, ipc=ipc, seed=seed)
    if method == "label-solve":
        return label_solve.LabelSolveConfig(**common, **options)
    stepped = dict(steps=STEP_CAP, eval_every=STEP_CAP, checkpoint_every=chunk, snapshots=True, max_seconds=budget,
                   clock=m["clock"])
    if method.startswith("kip"):
        return run.DistillConfig(**common, **stepped, **options)
    krr = dict(kernel=m["krr"]["kernel"], rf_models=m["krr"].get("rf_models", 4), rf_width=m["krr"].get("rf_width", 128))
    extra = dict(expert_dir=experts) if method == "mtt" else {}
    return method_run.MethodConfig(method=RUNS_AS.get(method, method), **common, **stepped, **krr, precision="float32", **extra, **options)


EXPERTS = "experts.json"  # in the cells folder: the MTT experts' record (the table states their training time)


def record_experts(m: dict, data_dir: str | None, experts_dir: str, cells_dir: str, progress: bool) -> dict:
    """MTT's experts (`kip trajectories`, resumable) in `experts_dir`; their record kept in the cells folder."""
    print(f"== MTT's experts: {m['experts']}")
    experts = trajectories.record(trajectories.TrajectoryConfig(dataset=m["dataset"], data_dir=data_dir, **m["experts"]),
                                  experts_dir, progress=progress)
    io.write_json(os.path.join(cells_dir, EXPERTS), experts)
    return experts


def judge(path: str, m: dict, data_dir: str | None, cache_dir: str, progress: bool) -> dict:
    """A kept set by the protocol (beside random real subsets) and by KRR under the mode's kernel."""
    r = transfer.protocol_run(path, m["dataset"], data_dir, m["protocol"], m["evaluation"],
                              cache_dir=cache_dir, progress=progress, size_overrides=m["size_evaluation"])
    return {"set": r["set"], "random": r["random"], "krr": judge_krr(path, m, data_dir), "overrides": r["overrides"]}


def owned(m: dict, method: str, ipc: int) -> bool:
    """Whether the method's final set at this size is also judged under its own protocol: every
    method with one, or at a size the mode's `own_sizes` lists, those it names."""
    return method in m.get("own", {}) and method in m.get("own_sizes", {}).get(ipc, m["own"])


def own_protocol(own: tuple[str, dict], path: str) -> tuple[str, dict] | None:
    """A kept set's own protocol (card, overrides) with a `LEARNED_LR` filled in from the set's
    `learned_lr`; None where the set does not carry it (MTT sets kept before snapshots held it)."""
    name, overrides = own
    if overrides.get("lr") != LEARNED_LR:
        return own
    kept = io.read_npz(path)
    return None if "learned_lr" not in kept else (name, {**overrides, "lr": float(kept["learned_lr"])})


def judge_own(path: str, own: tuple[str, dict], m: dict, data_dir: str | None, cache_dir: str, progress: bool) -> dict:
    """A kept set under its method's own evaluation protocol (`own_protocol`), beside random real
    subsets; the zoo's own protocol keeps its networks and subsets per size (only the overrides differ)."""
    name, overrides = own
    same = name == m["protocol"]
    r = transfer.protocol_run(path, m["dataset"], data_dir, name, {**(m["evaluation"] if same else {}), **overrides},
                              cache_dir=cache_dir, progress=progress, size_overrides=m["size_evaluation"] if same else None)
    return {"protocol": name, "set": r["set"], "random": r["random"], "overrides": r["overrides"]}


def judge_krr(path: str, m: dict, data_dir: str | None) -> float:
    """The set's KRR test accuracy under the mode's kernel (its own labels)."""
    k = m["krr"]
    options = run.KernelOptions(k["kernel"], k.get("rf_models", 4), k.get("rf_width", 128))
    return run.evaluate_run(path, m["dataset"], data_dir, options, precision="float32", log=lambda _: None)["test_accuracy"]


def table_rows(rows: list[dict], m: dict, starts: dict[int, list[float]]) -> list[dict]:
    """One table row per (size, budget, method) over its seeds, in order, then one per size for
    the random real subsets (their KRR: the real starts, one per seed)."""
    order = {name: i for i, name in enumerate(ALL)}
    out = []
    for (ipc, minutes, method), rs in table.groups(rows, lambda r: (r["ipc"], r["minutes"], r["method"]),
                                                   lambda k: (k[0], k[1], order[k[2]])):
        owns = [r["own"] for r in rs if "own" in r]
        networks = sorted({len(r["set"]["test_accuracies"]) for r in rs})
        out.append({"name": NAMES[method], "ipc": ipc, "minutes": f"{minutes:g}", "seeds": len(rs),
                    "networks": "/".join(map(str, networks)),
                    "protocol": f"**{report.percent([r['set']['mean'] for r in rs])}**",
                    "krr": report.percent([r["krr"] for r in rs]),
                    "own": (f"{owns[0]['protocol']}{own_lr(owns)}: {report.percent([o['set']['mean'] for o in owns])} "
                            f"({report.percent([o['random']['mean'] for o in owns])})") if owns else "-",
                    "steps": ", ".join(str(r["step"]) for r in rs),
                    "published": PUBLISHED.get(paper_name(m["dataset"]), {}).get((RUNS_AS.get(method, method), ipc), "-")})
    for ipc, start in sorted(starts.items()):
        random = next(r["random"] for r in rows if r["ipc"] == ipc)
        out.append({"name": "random real", "ipc": ipc, "minutes": "-", "seeds": len(start),
                    "networks": f"{random['subsets']} subsets x {random['networks_per_subset']}",
                    "protocol": f"{100 * random['mean']:.1f} ± {100 * random['std']:.1f}",
                    "krr": report.percent(start) if start else "-", "own": "-", "steps": "-",
                    "published": f"{RANDOM_PUBLISHED.get(paper_name(m['dataset']), {}).get(ipc, '-')} (DC paper)"})
    return out


def own_lr(owns: list[dict]) -> str:
    """' at lr 0.0251, 0.0252': the lrs the sets' methods learned, where their own protocol trains at them."""
    lrs = [o["learned_lr"] for o in owns if "learned_lr" in o]
    return f" at lr {', '.join(f'{lr:.3g}' for lr in lrs)}" if lrs else ""


def columns(m: dict) -> list[table.Column]:
    return table.shown(("method", "name"), ("images/class", "ipc"), ("minutes", "minutes"), ("seeds", "seeds"),
                       ("networks / set", "networks"), (f"{m['protocol']} protocol", "protocol"), ("KRR", "krr"), ("own protocol (random real)", "own"),
                       ("steps", "steps"), ("published", "published"))


def provenance_words(rows: list[dict]) -> str:
    """Which commits distilled the rows' sets and which judged them (a cell's cell.json and its
    judged.json; judgements kept before judged.json recorded its code say so)."""
    made = sorted({r["cell"].get("code", {}).get("stamp", "unknown") for r in rows})
    judged = sorted({r["judged_by"] for r in rows if r["judged_by"]})
    unrecorded = sum(r["judged_by"] is None for r in rows)
    return (f"Sets distilled at {', '.join(made)}; judged at {', '.join(judged) or '-'}"
            + (f" ({unrecorded} of {len(rows)} readings judged before judged.json recorded its code)" if unrecorded
               else "") + " (each cell's cell.json and judged.json).")


def own_words(m: dict) -> str:
    """'frepo: networks = 2, baseline_subsets = 3; at 10 per class: frepo, mtt only': each own
    protocol's overrides, and the sizes at which only some methods have their own judgement."""
    return ("; ".join(f"{k}: {', '.join(f'{a} = {b}' for a, b in v[1].items()) or 'none'}"
                      for k, v in m.get("own", {}).items()) or "none") + "".join(
        f"; at {ipc} per class: {', '.join(names)} only" for ipc, names in sorted(m.get("own_sizes", {}).items()))


CLOCK_WORDS = {"cpu": "the distilling process's CPU time, each cell's process pinned to one core (`taskset`)",
               "wall": "the steps' wall time"}
# the papers' own figures (their own protocols, full budgets; ../shared/PROTOCOLS.md), by data set
PUBLISHED = {
    "mnist": {("dc", 1): "91.7", ("dsa", 1): "88.7", ("dm", 1): "89.7", ("frepo", 1): "93.0",
              ("kip-exact", 1): "90.1 (width 1024)", ("dc", 10): "97.4", ("dsa", 10): "97.8", ("dm", 10): "97.5",
              ("frepo", 10): "98.6", ("kip-exact", 10): "97.5 (width 1024)", ("dd", 10): "79.5 (LeNet, random init)"},
    "cifar10": {("dc", 1): "28.3", ("dsa", 1): "28.8", ("dm", 1): "26.0", ("mtt", 1): "46.3 (ZCA)", ("frepo", 1): "46.8 (ZCA)",
                ("kip-exact", 1): "49.9 (width 1024, ZCA)", ("dc", 10): "44.9", ("dsa", 10): "52.1", ("dm", 10): "48.9",
                ("mtt", 10): "65.3 (ZCA)", ("frepo", 10): "65.5 (ZCA)", ("kip-exact", 10): "62.7 (width 1024, ZCA)"},
}
RANDOM_PUBLISHED = {"mnist": {1: "64.9", 10: "95.1", 50: "97.9"}, "cifar10": {1: "14.4", 10: "26.0", 50: "43.4"}}


ZCA_NOTE = """
CIFAR-10: every set here is distilled and judged on standardised images; the published figures
marked ZCA were distilled and evaluated on ZCA-whitened ones (kip's matching, unrolled and FRePo
runs have no ZCA option yet): beside those figures the comparison is not like for like."""


def paper_name(dataset: str) -> str:
    """The data set the published figures are for: 'cifar10' for the JPEG copy 'cifar10_jpeg_lossy'."""
    return "cifar10" if dataset.startswith("cifar10") else dataset


def main() -> None:
    def extra(parser):
        parser.add_argument("--methods", nargs="+", default=list(ALL), choices=ALL)
        parser.add_argument("--ipc", type=int, nargs="+", default=None, help="a subset of the mode's sizes")
        parser.add_argument("--seeds", type=int, default=None, help="seeds per size (default: the mode's)")
        parser.add_argument("--first-seed", type=int, default=0,
                            help="the seeds FIRST .. FIRST + seeds - 1: one seed's cells in a process of its own (one per "
                                 "core); a later --kept-only call pools them")
        parser.add_argument("--dataset", default=None,
                            help="the data set (default: the mode's, mnist; --quick: digits only): e.g. --gpu --dataset "
                                 "cifar10 (TFDS) or cifar10_jpeg_lossy (DATA_DIR/cifar10_jpeg_lossy.npz) for CIFAR-10 "
                                 "beside its published figures, with the mode's settings")
        parser.add_argument("--kept-only", action="store_true",
                            help="run and train nothing: the table from the cells already kept and judged (a method's "
                                 "row counts the seeds it has; a missing cell or judgement is named and left out)")
        parser.add_argument("--cells-dir", default=None,
                            help="where each finished cell's sets, record and judgements are kept (default: "
                                 "RESULTS-DIR/method_zoo_<dataset>[_gpu|_quick]_cells, committed so that the table's "
                                 "cells fill across sessions; the run folders under --runs-dir are working space)")

    args, mode, runs_dir = report.experiment_args(__doc__, "method_zoo", "the papers' widths, more seeds and networks",
                                                  "digits, seconds-long budgets", extra=extra)
    m = MODES[mode]
    if args.first_seed < 0:
        raise SystemExit(f"method_zoo.py: error: --first-seed must be >= 0, got {args.first_seed}")
    if args.dataset is not None and args.dataset != m["dataset"]:
        if mode == "quick":
            raise SystemExit(f"method_zoo.py: error: --quick runs the embedded digits, not --dataset {args.dataset}")
        m = {**m, "dataset": args.dataset}
    data_dir = None if m["dataset"] == "digits" else args.data_dir
    cache_dir = os.path.join(os.path.dirname(runs_dir) or ".", "networks")
    progress = not args.no_progress
    experts_dir, experts = os.path.join(runs_dir, "experts"), None
    name = f"method_zoo_{m['dataset']}" + {"cpu": "", "gpu": "_gpu", "quick": "_quick"}[mode]
    cells_dir = args.cells_dir or os.path.join(args.results_dir, f"{name}_cells")
    planned = [(ipc, method, seed, tuple(60.0 * x for x in minutes))
               for ipc, (seeds, minutes) in m["sizes"].items() if not args.ipc or ipc in args.ipc
               for method in args.methods for seed in range(args.first_seed, args.first_seed + (args.seeds or seeds))]

    def cell_of(ipc: int, method: str, seed: int, budgets: tuple[float, ...]) -> tuple[str, object]:
        """(the kept cell's folder, its run's config)."""
        options, chunk = {**m["methods"], **m["size_methods"].get(ipc, {})}[method]
        config = config_for(method, options, chunk, m, data_dir, ipc, seed, max(budgets), experts_dir)
        return os.path.join(cells_dir, f"{method}-ipc{ipc}-seed{seed}"), config

    if not args.kept_only:  # a kept cell of other options is named before any cell runs (or replaced: --overwrite)
        try:
            cells.check_cells([cell_of(*p) for p in planned], args.overwrite)
        except InputError as e:
            raise SystemExit(f"method_zoo.py: error: {e}") from None
    rows, start_krr = [], {}
    for ipc, method, seed, budgets in planned:
        kept_dir, config = cell_of(ipc, method, seed, budgets)
        print(f"== {NAMES[method]}, {ipc}/class, seed {seed}")
        closed_form = isinstance(config, label_solve.LabelSolveConfig)
        if cells.finished(kept_dir, config) is None:
            if args.kept_only:  # a kept cell of other options (e.g. another --runs-dir's experts): say which
                why = cells.cell_conflict(kept_dir, config)
                print("   not kept: left out (--kept-only)" + (f"; {why}" if why else ""))
                continue
            if method == "mtt" and experts is None:
                experts = record_experts(m, data_dir, experts_dir, cells_dir, progress)
            cells.budget_cell(config, os.path.join(runs_dir, os.path.basename(kept_dir)), kept_dir, budgets,
                              m["clock"], {"code": args.provenance, "clock": m["clock"],
                                           "machine": report.machine(args.provenance)}, progress,
                              args.overwrite)
        kept = cells.budget_readings(kept_dir, budgets, closed_form, m["clock"])
        judged = cells.Judgements(kept_dir, {k: m[k] for k in ("protocol", "evaluation", "size_evaluation", "krr")},
                                  code=args.provenance)

        def judgement(key: str, compute):
            """The stored judgement, else `compute()`'s; with --kept-only nothing is computed (None)."""
            if args.kept_only and key not in judged.values:
                print(f"   {key}: not judged yet, left out (--kept-only)")
                return None
            return judged.get(key, compute)

        start = run.snapshot_path(kept_dir, 0)
        if isinstance(config, method_run.MethodConfig) and (ipc, seed) not in start_krr and os.path.exists(start):
            # every run of this seed starts from the same real images (run.start_indices)
            krr_of_start = judgement("start_krr", lambda: judge_krr(start, m, data_dir))
            if krr_of_start is not None:
                start_krr[ipc, seed] = krr_of_start
        for budget, path in kept.items():
            if path is None:
                print(f"   {budget / 60:g} min: not reached")
                continue
            r = judgement(os.path.relpath(path, kept_dir), lambda: judge(path, m, data_dir, cache_dir, progress))
            if r is None:
                continue
            own = own_protocol(m["own"][method], path) if owned(m, method, ipc) and budget == max(budgets) else None
            own_judged = None if own is None else judgement(
                f"own {own[0]} {json.dumps(own[1], sort_keys=True)} {os.path.relpath(path, kept_dir)}",
                lambda: judge_own(path, own, m, data_dir, cache_dir, progress))
            if own_judged is not None:  # the final set: its own protocol too
                r = {**r, "own": own_judged}
                if m["own"][method][1].get("lr") == LEARNED_LR:
                    r["own"] = {**r["own"], "learned_lr": own[1]["lr"]}
            step = int(os.path.basename(path).split("-")[1].split(".")[0]) if "step-" in path else 0
            rows.append({**r, "method": method, "ipc": ipc, "seed": seed, "minutes": budget / 60, "step": step,
                         "path": path, "config": dataclasses.asdict(config),
                         "judged_by": judged.made_by.get(os.path.relpath(path, kept_dir), {}).get("stamp"),
                         "cell": io.read_json(os.path.join(kept_dir, "cell.json"))})
            print(f"   {budget / 60:g} min (step {step}): {m['protocol']} {100 * r['set']['mean']:.2f}%, "
                  f"KRR {100 * r['krr']:.2f}%")
    if "mtt" in args.methods and experts is None and os.path.exists(os.path.join(cells_dir, EXPERTS)):
        experts = io.read_json(os.path.join(cells_dir, EXPERTS))
    if not rows:
        raise SystemExit("method_zoo.py: error: nothing to report (no run reached a budget)")
    ds_name = m["dataset"]
    starts = {ipc: [v for (i, _), v in start_krr.items() if i == ipc] for ipc in sorted({r["ipc"] for r in rows})}
    curves = {NAMES[method]: [] for method in ALL if any(r["method"] == method for r in rows)}
    for method in ALL:
        for ipc in sorted({r["ipc"] for r in rows}):
            points = [r for r in rows if r["method"] == method and r["ipc"] == ipc]
            for minutes in sorted({r["minutes"] for r in points}):
                accs = [r["set"]["mean"] for r in points if r["minutes"] == minutes]
                if ipc == min(r["ipc"] for r in rows):
                    curves[NAMES[method]].append((minutes, *report.mean_std(accs)))
    plots.accuracy_curves(os.path.join(args.results_dir, f"{name}.png"), {k: v for k, v in curves.items() if v},
                          ("CPU-" if m["clock"] == "cpu" else "") + "minutes of distillation on this machine", f"{ds_name}, {min(r['ipc'] for r in rows)} image(s) "
                          f"per class, {m['protocol']} protocol", log_x=True,
                          full=next(((r["random"]["mean"], r["random"]["std"]) for r in rows
                                     if r["ipc"] == min(x["ipc"] for x in rows)), None),
                          reference="random real subsets")
    # what each method's final set looks like (the smallest size, its first seed: 0 unless --first-seed), below
    # the real images it started from
    ipc0, final = min(r["ipc"] for r in rows), max(r["minutes"] for r in rows)
    seed0 = min(r["seed"] for r in rows if r["ipc"] == ipc0)
    shown = [r for r in rows if r["ipc"] == ipc0 and r["seed"] == seed0 and r["minutes"] == final]
    # every run of a seed starts from the same real images: the first kept start of that seed shows them
    start_sets = [p for p in (run.snapshot_path(os.path.join(cells_dir, f"{r['method']}-ipc{ipc0}-seed{seed0}"), 0)
                              for r in shown) if os.path.exists(p)]

    def images_and_labels(path: str) -> tuple[np.ndarray, np.ndarray]:
        f = io.read_npz(path)
        return f["images"], f["labels"]

    sets = {"real start": images_and_labels(start_sets[0]) if start_sets else None}
    sets.update({NAMES[r["method"]]: images_and_labels(r["path"]) for r in shown})
    if len(sets) > 1:  # no final reading at the smallest size (budgets not reached): no picture
        plots.set_rows(os.path.join(args.results_dir, f"{name}_sets.png"), {k: v for k, v in sets.items() if v is not None},
                       f"{ds_name}, {ipc0} image(s) per class after {final:g} {'CPU-' if m['clock'] == 'cpu' else ''}"
                       f"minutes of distillation (seed {seed0})")
    expert_note = "no MTT row" if experts is None else (
        f"MTT's experts: {m['experts']['experts']} ConvNets x {m['experts']['epochs']} epochs (width "
        f"{m['experts'].get('width', 128)}), {sum(experts['seconds']) / 60:.1f} minutes of training on this machine ("
        f"{sum(experts.get('cpu_seconds', [np.nan])) / 60:.1f} CPU-minutes), not "
        f"counted in MTT's budget; their final test accuracy {100 * np.mean(experts['final_test_accuracy']):.2f}%")
    ev = protocols.with_overrides(protocols.load(m["protocol"]), **m["evaluation"])[1]
    body = table.markdown(columns(m), table_rows(rows, m, starts)) + f"""

![accuracy against minutes]({name}.png)

![each method's set]({name}_sets.png)

{ds_name} test accuracy (%) of each method's set read after the stated minutes of distillation on
this machine ({CLOCK_WORDS[m['clock']]}, compilation included; evaluations and checkpoints not), mean ±
std over seeds: "{m['protocol']} protocol": finite networks trained on the set's hard labels as
`kip protocols {m['protocol']}` states (overrides here: {', '.join(f'{k} = {v}' for k, v in ev.items()) or 'none'}),
the same for every method (DC's paper uses the `dc` protocol); "own protocol": the final set
(largest budget) also under its method's own evaluation where kip has its card, on the set's learned
labels by MSE (`kip protocols frepo`: FRePo's Conv; `kip protocols kip`: the kernel's finite ConvNet3,
lr from the card's grid on a validation split), and MTT's under the {m['protocol']} protocol at the lr it learned
with the set, as MTT's paper evaluates (sets kept before their snapshots held that lr show "-"; overrides:
{own_words(m)}), beside random real subsets under it; "KRR": kernel regression from the set (its labels, learned where the
method learns them) under {m['krr']['kernel']}, one kernel for every method. "random real": class-balanced random
real subsets of the same size under the same protocol (its KRR: the real images the runs start
from, one set per seed).
"steps": the step of each seed's reading. Label Solve is one closed-form solve, read at every
budget it fits in. {expert_note}. Settings per method (CPU: narrower networks and smaller
real batches than the papers; each row's full options are in the .json): {', '.join(f'{k}: {v[0]}' for k, v in m['methods'].items())}.
Nothing is chosen on the test set. {provenance_words(rows)}{ZCA_NOTE if paper_name(m["dataset"]) == "cifar10" else ""}
""" + ("\nSmoke run (--quick): tiny networks, seconds-long budgets; it checks the pipeline, not the methods.\n"
       if mode == "quick" else "")
    report.write_results(name, f"Every distillation method at equal compute on {ds_name}", body,
                         {"mode": mode, "rows": rows, "experts": experts}, results_dir=args.results_dir,
                         code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
