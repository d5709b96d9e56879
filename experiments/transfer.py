"""Distilled sets trained into finite networks under named protocols (`kip protocols`), each beside
class-balanced random real subsets of the same size trained the same way (NeurIPS 2021's
KIP-ConvNet -> ConvNet transfer, RFAD's kernel-aligned recipe, DC's evaluation).

    python experiments/transfer.py runs/transfer_sets --data-dir ../shared/datasets     # every */distilled.npz below
    python experiments/transfer.py runs/transfer_sets --data-dir ../shared/datasets --protocols rfad dc
    python experiments/transfer.py --quick        # digits: distils 1 and 5 per class, tiny networks, a smoke run
    python experiments/transfer.py runs/more_sets --merge results/transfer_mnist.json   # new sets beside the table's rows

Configuration only: each mode names the protocols and their overrides (a CPU runs width-128
networks where the papers use 1024, and says so); `kip.transfer.evaluate_set` trains the
networks, keeping each finished one in networks/ beside --runs-dir (runs/networks by default,
shared with experiments/protocol_baselines.py: the same random subsets are trained once). Sets are trained into the finite network
of the kernel they were distilled with (a matched transfer: rf-convnet3 and convnet3 sets into
the finite ConvNet3) unless the protocol's card names a network of its own (dc, dsa). Sets named
`NAME-seedK` are grouped as distillation seeds of NAME (mean ± std over them). The validation
split of every set of one size excludes all of those sets' source images, so their random
subsets share one split and are trained once; it also excludes the start images of distillation
seeds 0-2 of that size, so adding a seed's set later changes no split. `--merge` puts the rows of
earlier results of this script beside the ones judged now (each row names the commit that judged it),
so a table grows by its new sets without judging the old ones again. Writes results/transfer_<dataset>.{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import glob
import os
import re

import numpy as np

from kip import InputError, cells, io, protocols, release, report, run, table, transfer

SEEDS = 3  # distillation seeds a headline cell uses (0, 1, 2)

MODES = {
    # protocol -> overrides of its card; "matched": train the set's own kernel's finite network
    "cpu": dict(dataset="mnist", protocols={
        # RFAD's learning rates are for width 1024; the NTK of a standard-parameterisation network grows
        # linearly with width, so width 128 takes each size's rate x 1024 / 128 (at 1e-3, 1500 steps
        # reached 40 % validation accuracy on a 1-per-class set)
        "rfad": dict(overrides=dict(width=128, val_per_class=100), matched=True, lr_times_width_ratio=True),
        "kip": dict(overrides=dict(width=128, tune_lr=(0.01, 0.1), tune_weight_decay=(0.0, 1e-3), val_size=1000,
                                   networks=3), matched=True),
        # a DC network on 100 images takes ~6 min here: one per set at 10 per class
        "dc": dict(overrides=dict(networks=3), matched=False, networks_by_ipc={10: 1})}, baseline_subsets={1: 5, 10: 3}),
    "gpu": dict(dataset="mnist", protocols={
        "rfad": dict(overrides=dict(networks=3), matched=True), "kip": dict(overrides={}, matched=True),
        "dc": dict(overrides=dict(networks=10), matched=False)}, baseline_subsets={1: 5, 10: 5, 50: 5}),
    "quick": dict(dataset="digits", protocols={
        "rfad": dict(overrides=dict(width=8, steps=300, lr=0.01, val_per_class=10, eval_every=20, patience=100),
                     matched=True),
        "dc": dict(overrides=dict(width=8, epochs=20, networks=2), matched=False)}, baseline_subsets={1: 2, 5: 2}),
}


def setting_of(path: str) -> tuple[str, int]:
    """('ipc1-rf-mse-learn', 0) for .../ipc1-rf-mse-learn/distilled.npz, (NAME, K) for NAME-seedK."""
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    m = re.fullmatch(r"(.*)-seed(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


def quick_sets(runs_dir: str, overwrite: bool = False) -> list[str]:
    """Digits KIP-FC sets (learned labels, 100 steps) at 1 and 5 per class, made or reused."""
    entry.enable_x64()  # these sets are distilled here, with float64 ridge solves
    paths = []
    for ipc in (1, 5):
        out = os.path.join(runs_dir, "sets", f"digits-fc1-ipc{ipc}")
        cells.distill_cell(run.DistillConfig(ipc=ipc, steps=100, learn_labels=True), out, overwrite=overwrite)
        paths.append(os.path.join(out, "distilled.npz"))
    return paths


def pct(summary: dict | None) -> str:
    if summary is None:
        return "-"
    if len(summary["test_accuracies"]) == 1:  # one network: no spread to show
        return f"{100 * summary['mean']:.1f} (1 network)"
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"


COLUMNS = table.shown(("setting", "setting"), ("images/class", "ipc"), ("distillation seeds", "seeds"),
                      ("KRR (own kernel)", "krr"), ("protocol: network", "network"), ("set", "set"),
                      ("random real, same protocol", "random"), ("set - random", "difference"),
                      ("set, validation", "validation"), ("published", "published"), ("judged at", "judged_at"))
BEST = " (best on validation)"  # the setting of a size and protocol whose networks did best on validation


def row_key(row: dict) -> tuple:
    """What a row judges: one distillation seed of one setting under one protocol."""
    return row["setting"], row["distillation_seed"], row["ipc"], row["protocol"]


def read_merged(paths: list[str], mode: str) -> dict[str, dict]:
    """The earlier results files of this script (path -> its JSON); InputError for one that is not."""
    files = {}
    for path in paths:
        try:
            files[path] = io.read_json(path)
        except (OSError, ValueError) as e:
            raise InputError(f"--merge {path}: not a readable results file ({e})") from None
        if files[path].get("mode") != mode or not isinstance(files[path].get("rows"), list):
            raise InputError(f"--merge {path}: not a {mode}-mode results file of transfer.py")
    return files


def merged_rows(files: dict[str, dict], judged_now: set[tuple]) -> tuple[list[dict], list[dict]]:
    """(the rows of earlier results files (`read_merged`), each with the commit that judged it,
    leaving out those judged now; a record per file: its command, commit and rows kept)."""
    rows, sources = [], []
    for path, earlier in files.items():
        stamp = earlier.get("provenance", {}).get("stamp", "unknown")
        kept = [{**r, "judged_at": r.get("judged_at", stamp)} for r in earlier["rows"] if row_key(r) not in judged_now]
        rows += kept
        sources.append({"file": path, "command": earlier.get("command"), "commit": stamp, "rows": len(kept),
                        "replaced": len(earlier["rows"]) - len(kept)})
    return rows, sources


def render(rows: list[dict]) -> str:
    """One line per setting x protocol: distillation seeds pooled (each seed's networks' mean)."""
    groups = table.groups(rows, lambda r: (r["setting"], r["ipc"], r["protocol"]), lambda k: (k[1], k[2], k[0]))
    vals = {key: np.mean([np.mean(r["set"]["val_accuracies"]) for r in rs]) for key, rs in groups}
    rivals: dict[tuple, list] = {}  # (size, protocol) -> its settings' (validation accuracy, setting)
    for (setting, ipc, protocol), val in vals.items():
        rivals.setdefault((ipc, protocol), []).append((-1.0 if np.isnan(val) else val, setting))
    out = []
    for (setting, ipc, protocol), rs in groups:
        m, s = report.mean_std([r["set"]["mean"] for r in rs])
        krr = [r["krr"] for r in rs if r["krr"] is not None]
        val, others = vals[setting, ipc, protocol], rivals[ipc, protocol]
        card = rs[0]["card"]
        net_text = f"{card['model']} w{card['width']}, lr {rs[0]['train_config']['lr']:g}" + (", matched" if rs[0]["matched"] else "")
        chosen = len(others) > 1 and not np.isnan(val) and max(others)[1] == setting
        out.append({"setting": setting + (BEST if chosen else ""), "ipc": ipc, "seeds": len(rs),
                    "krr": "-" if not krr else f"{100 * np.mean(krr):.1f}",
                    "network": f"{protocol}: {net_text}",
                    "set": f"**{100 * m:.1f} ± {100 * s:.1f}**" if len(rs) > 1 else f"**{pct(rs[0]['set'])}**",
                    "random": pct(rs[0]["random"]),
                    "difference": f"{100 * report.mean_std([r['difference'] for r in rs])[0]:+.1f}",
                    "validation": "-" if np.isnan(val) else f"{100 * val:.1f}",
                    "published": "; ".join(f"{x['method']} {x['accuracy']}" for x in rs[0]["published"]) or "-",
                    "judged_at": ", ".join(sorted({r["judged_at"] for r in rs}))})
    return table.markdown(COLUMNS, out)


def main() -> None:
    def extra(parser):
        parser.add_argument("dirs", nargs="*", help="folders searched (recursively) for distilled.npz files")
        parser.add_argument("--protocols", nargs="+", default=None, help="a subset of the mode's protocols")
        parser.add_argument("--name", default=None, help="results file name (default: transfer_<dataset>)")
        parser.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                            help="earlier results of this script (.json) whose rows join the table (a set and protocol "
                                 "judged now replaces its merged row); without folders, the merged rows alone")

    args, mode, runs_dir = report.experiment_args(__doc__, "transfer", "width 1024, the cards' network counts",
                                                  "digits, KIP-FC sets made here, tiny networks", extra=extra)
    m = MODES[mode]
    try:
        merged = read_merged(args.merge, mode)  # a bad file stops here, before any set is made or judged
    except InputError as e:
        raise SystemExit(f"transfer.py: error: {e}") from None
    chosen = {k: v for k, v in m["protocols"].items() if args.protocols is None or k in args.protocols}
    data_dir = None if m["dataset"] == "digits" else args.data_dir
    paths = quick_sets(runs_dir, args.overwrite) if mode == "quick" else sorted(
        p for d in args.dirs for p in glob.glob(os.path.join(d, "**", "distilled.npz"), recursive=True))
    if not paths and (args.dirs or not args.merge):
        raise SystemExit(f"transfer.py: error: no distilled.npz under {', '.join(args.dirs) or '(no folders given)'}")
    loaded = {p: release.load_distilled_for(p, m["dataset"], data_dir) for p in paths}
    by_size: dict[int, list[np.ndarray]] = {}
    for s in loaded.values():
        ipc = len(s.images) // s.dataset.num_classes
        if ipc not in by_size:
            # the start images of distillation seeds 0..SEEDS-1 too, so that distilling a further seed
            # later leaves every size's validation split (and so every trained network) as it was
            ds = s.dataset
            by_size[ipc] = [np.asarray(run.start_indices(k, ds.y_train, ds.num_classes, ipc)) for k in range(SEEDS)]
        by_size[ipc].append(s.sources)
    cache_dir = os.path.join(os.path.dirname(runs_dir) or ".", "networks")  # shared with protocol_baselines.py

    def judged(row: dict) -> dict:
        """The set under one protocol (its overrides for the set's size), beside random real subsets."""
        path, name = row["path"], row["protocol"]
        s, spec, (setting, dseed) = loaded[path], chosen[name], setting_of(path)
        ipc = len(s.images) // s.dataset.num_classes
        metrics = os.path.join(os.path.dirname(path), "metrics.json")
        krr = io.read_json(metrics).get("test_accuracy") if os.path.exists(metrics) else None
        overrides = dict(spec["overrides"], baseline_subsets=m["baseline_subsets"].get(ipc, 3))
        overrides["networks"] = spec.get("networks_by_ipc", {}).get(ipc, overrides.get("networks"))
        if spec["matched"]:
            overrides["model"] = (s.kernel or "").removeprefix("rf-")
        card = protocols.load(name)
        if spec.get("lr_times_width_ratio"):
            overrides["lr"] = protocols.for_set(card, s.dataset.name, ipc)[0].lr * card.width / overrides["width"]
        p, recorded = protocols.with_overrides(card, **overrides)
        print(f"== {setting} (distillation seed {dseed}), {ipc}/class, protocol {name}")
        r = transfer.evaluate_set(s.images, s.labels, s.dataset, s.preprocessing, p, s.sources,
                                  cache_dir=cache_dir, progress=not args.no_progress,
                                  val_exclude=np.concatenate(by_size[ipc]))
        return {**r, "setting": setting, "distillation_seed": dseed, "krr": krr, "kernel": s.kernel,
                "matched": spec["matched"], "overrides": recorded, "preprocessing": s.note,
                "judged_at": args.provenance["stamp"]}

    # no runs here (the sets are given, or made by quick_sets): every trained network is in the networks cache
    points = table.grid(path=list(loaded), protocol=list(chosen)) if loaded else []
    judged_now = {(*setting_of(p["path"]), len(loaded[p["path"]].images) // loaded[p["path"]].dataset.num_classes,
                   p["protocol"]) for p in points}
    earlier, sources = merged_rows(merged, judged_now)
    rows = table.run_rows(points, lambda point: {}, runs_dir, judged) + earlier
    ds_name = rows[0]["dataset"]
    body = render(rows) + f"""

{ds_name} test accuracy (%) of finite networks trained on each distilled set ("set": mean ± std over
the set's networks, or with several distillation seeds over the seeds' means) and on class-balanced
random subsets of real training images of the same size under the same protocol (mean ± std over
subsets x networks; centred one-hot labels for the protocols that train on the set's labels, hard
labels otherwise). "set - random": the difference of the means (per seed, then averaged). A
protocol reports the final network, or (rfad) each network at its best validation accuracy;
"set, validation" is that accuracy on the validation split, which never holds the sets' source
images or the random subsets' images; choices (the kip protocol's lr / L2 grid, rfad's early
stopping) are made on it, nothing on the test set. "KRR": the set's accuracy under the kernel it
was distilled with (from its metrics.json). Protocols and their overrides here, as the card's
defaults before its per-size rows (`kip protocols NAME`: lr, label scale, weight decay,
augmentation and epochs per data set and size; on MNIST `dc` trains 1000 + 1 epochs with DC's
augmentation), which apply to every row:
""" + "\n".join(f"- `{name}`{' (matched: the finite network of the set' + chr(39) + 's kernel)' if spec['matched'] else ''}: "
                f"{protocols.with_overrides(protocols.load(name), **spec['overrides'])[0].describe()}; overrides of the card: "
                f"{', '.join(f'{k} = {v}' for k, v in spec['overrides'].items()) or 'none'}"
                + (f"; networks per set by size: {spec['networks_by_ipc']}" if spec.get("networks_by_ipc") else "")
                + ("; lr = the card's rate for the size x card width / width (the NTK of a standard-parameterisation "
                   "network grows linearly with width)" if spec.get("lr_times_width_ratio") else "")
                for name, spec in chosen.items()) + "\n" + "".join(
        f"\nRows from {x['file']} ({x['rows']} rows; judged at {x['commit']} by `{x['command']}`"
        + (f"; {x['replaced']} of its rows judged again here" if x["replaced"] else "") + ")" for x in sources) + (
        f"\n\n\"{BEST.strip(' ()')}\": per size and protocol, the setting whose networks reached the highest mean "
        "accuracy on the validation split (protocols that report the final network have none).\n") + (
        "\nSmoke run (--quick): tiny networks, few steps; it checks the pipeline, not the method.\n" if mode == "quick" else "")
    name = args.name or f"transfer_{ds_name}" + ("_quick" if mode == "quick" else "")
    report.write_results(name, f"Distilled sets on {ds_name} trained into finite networks under named protocols", body,
                         {"mode": mode, "rows": rows}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
