"""DC, DSA and DM (the matching family) distilled here and judged as their papers judge them: by
the `dc` (DC) or `dsa` (DSA, DM) protocol's finite networks, beside class-balanced random real
subsets under the same protocol and the published figures (MNIST, 1 per class: DC 91.7, DSA 88.7,
DM 89.7; random real 64.9), with KIP sets (given folders) evaluated the same way.

    python experiments/matching.py --data-dir ../shared/datasets                 # CPU: MNIST, 1 per class, 3 seeds
    python experiments/matching.py --data-dir ../shared/datasets --ipc 10 --seeds 1
    python experiments/matching.py --data-dir ../shared/datasets --kip-sets runs/transfer_sets/ipc1-rf-platt-learn*
    python experiments/matching.py --gpu --data-dir ../shared/datasets           # the papers' settings, 1 / 10 / 50
    python experiments/matching.py --quick                                       # digits, tiny networks, a smoke run

Configuration only: each mode names the methods' settings (a CPU run uses a narrower matching
network, a smaller real batch and fewer iterations than the papers, and the table says which),
the protocols and their overrides. Every distillation is a cell of the table (`kip.table`: reused
when done, resumed when interrupted, never replaced without --overwrite) in --runs-dir; every trained network is kept in networks/
beside it (shared with experiments/transfer.py and protocol_baselines.py). Writes
results/matching_<dataset>.{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import dataclasses
import os

import numpy as np

from kip import InputError, io, matching, method_run, protocols, report, table, transfer

PROTOCOL_OF = {"dc": "dc", "dsa": "dsa", "dm": "dsa"}  # as each paper evaluates its sets
MODES = {
    # CPU: ~1-1.5 s per DC / DSA iteration and ~0.7 s per DM iteration at width 64 and 64 real images
    # per class on this 2-core machine: each run within about 20 minutes. At 10 per class DC's loops
    # (10 matching steps, 50 epochs of inner training between them) take ~1 minute per iteration
    # here, so the CPU runs shorten the inner loop to 10 epochs and take 40 iterations (size_methods)
    "cpu": dict(dataset="mnist", sizes={1: 3, 10: 1}, kernel="convnet3", precision="float32", methods={
        "dc": dict(steps=500, width=64, real_batch=64), "dsa": dict(steps=500, width=64, real_batch=64),
        "dm": dict(steps=1500, width=64, real_batch=64)},
        size_methods={10: {"dc": dict(steps=40, outer_loop=10, inner_loop=10), "dsa": dict(steps=40, outer_loop=10, inner_loop=10),
                           "dm": dict(steps=3000)}},
        # KRR at 10 per class: the exact ConvNet3 kernel between 100 images and the test set takes
        # ~25 minutes here, its random-feature estimate (4 networks of width 128) ~1 minute
        size_kernel={10: "rf-convnet3"},
        # one width-128 network trained 1001 steps on 100 images takes ~15 minutes here: at 10 per
        # class one network per set and 2 random subsets (stated in the table)
        evaluation=dict(networks=2),
        size_evaluation={1: dict(baseline_subsets=5), 10: dict(networks=1, baseline_subsets=2)}),
    "gpu": dict(dataset="mnist", sizes={1: 3, 10: 3, 50: 3}, kernel="convnet3", precision="float32",
                methods={"dc": {}, "dsa": {}, "dm": {}}, evaluation=dict(networks=20),
                size_evaluation={k: dict(baseline_subsets=5) for k in (1, 10, 50)}),
    "quick": dict(dataset="digits", sizes={1: 1}, kernel="fc1", precision="float32", methods={
        "dc": dict(steps=6, width=8, real_batch=16), "dsa": dict(steps=6, width=8, real_batch=16),
        "dm": dict(steps=6, width=8, real_batch=16)},
        evaluation=dict(networks=1, width=8, epochs=20), size_evaluation={1: dict(baseline_subsets=2)}),
}


def evaluate(path: str, protocol: str, m: dict, data_dir: str | None, cache_dir: str, progress: bool) -> dict:
    """A distilled set under `protocol` (the mode's overrides) beside random real subsets."""
    r = transfer.protocol_run(path, m["dataset"], data_dir, protocol, m["evaluation"],
                              cache_dir=cache_dir, progress=progress, size_overrides=m["size_evaluation"])
    return {**r, "path": path}


COLUMNS = table.shown(("method", "method"), ("images/class", "ipc"), ("distillation seeds", "seeds"),
                      ("distillation (CPU settings)", "how"), ("min / run", "minutes"), ("KRR", "krr"),
                      ("protocol", "protocol"), ("networks / set", "networks"), ("set", "set"),
                      ("random real, same protocol", "random"), ("set - random", "difference"), ("published", "published"))


def render(rows: list[dict]) -> str:
    """One line per method x size x protocol: distillation seeds pooled."""
    out = []
    for (method, ipc, protocol), rs in table.groups(rows, lambda r: (r["method"], r["ipc"], r["protocol"]),
                                                    lambda k: (k[1], k[0], k[2])):
        m, s = report.mean_std([r["set"]["mean"] for r in rs])
        krr = [r["krr"] for r in rs if r.get("krr") is not None]
        st = rs[0].get("settings")
        minutes = [r["seconds"] / 60 for r in rs if r.get("seconds")]
        random = rs[0]["random"]
        out.append({
            "method": method, "ipc": ipc, "seeds": len(rs), "protocol": protocol, "networks": rs[0]["card"]["networks"],
            "how": "-" if st is None else f"{st['iterations']} it., width {st['width']}, {st['real_batch']} real/class" + (
                f", loops {st['outer_loop']}/{st['inner_loop']}" if method != "DM" else ""),
            "minutes": f"{np.mean(minutes):.0f}" if minutes else "-", "krr": f"{100 * np.mean(krr):.1f}" if krr else "-",
            "set": f"**{100 * m:.1f} ± {100 * s:.1f}**", "random": f"{100 * random['mean']:.1f} ± {100 * random['std']:.1f}",
            "difference": f"{100 * report.mean_std([r['difference'] for r in rs])[0]:+.1f}",
            "published": "; ".join(f"{x['method']} {x['accuracy']}" for x in rs[0]["published"]) or "-"})
    return table.markdown(COLUMNS, out)


def main() -> None:
    def extra(parser):
        parser.add_argument("--methods", nargs="+", default=list(matching.METHODS), choices=matching.METHODS)
        parser.add_argument("--ipc", type=int, nargs="+", default=None, help="a subset of the mode's sizes")
        parser.add_argument("--seeds", type=int, default=None, help="distillation seeds per size (default: the mode's)")
        parser.add_argument("--kip-sets", nargs="*", default=[], help="KIP run folders evaluated under dc and dsa beside them")

    args, mode, runs_dir = report.experiment_args(__doc__, "matching", "the papers' settings, 1 / 10 / 50 per class",
                                                  "digits, tiny networks", extra=extra)
    m = MODES[mode]
    missing = [f for f in args.kip_sets if not os.path.isfile(os.path.join(f, "distilled.npz"))]
    if missing:  # before hours of distillation, not after
        raise SystemExit(f"matching.py: error: --kip-sets: no distilled.npz in {missing[0]}")
    data_dir = None if m["dataset"] == "digits" else args.data_dir
    cache_dir = os.path.join(os.path.dirname(runs_dir) or ".", "networks")
    progress = not args.no_progress
    points = [dict(ipc=ipc, method=method, seed=seed) for ipc, seeds in m["sizes"].items() if not args.ipc or ipc in args.ipc
              for method in args.methods for seed in range(args.seeds or seeds)]

    def cells_of(point: dict) -> dict:
        ipc, method, seed = point["ipc"], point["method"], point["seed"]
        options = {**m["methods"][method], **m.get("size_methods", {}).get(ipc, {}).get(method, {})}
        kernel = m.get("size_kernel", {}).get(ipc, m["kernel"])
        config = method_run.MethodConfig(method=method, dataset=m["dataset"], data_dir=data_dir, ipc=ipc, seed=seed,
                                         kernel=kernel, precision=m["precision"], **options,
                                         **(dict(rf_models=4, rf_width=128) if kernel.startswith("rf-") else {}))
        # KRR at the start and the end; a checkpoint every 100 iterations
        return {"run": (f"{method}-ipc{ipc}-seed{seed}",
                        dataclasses.replace(config, eval_every=config.iterations or 1, checkpoint_every=100))}

    def judged(row: dict) -> dict:
        r = evaluate(os.path.join(row["folders"]["run"], "distilled.npz"), PROTOCOL_OF[row["method"]], m, data_dir,
                     cache_dir, progress)
        metrics = row["run"]
        return {**r, "method": row["method"].upper(), "krr": metrics["test_accuracy"], "settings": metrics["settings"],
                "seconds": metrics["seconds"]}

    try:
        rows = table.run_rows(points, cells_of, runs_dir, judged, progress=progress, overwrite=args.overwrite)
    except InputError as e:
        raise SystemExit(f"matching.py: error: {e}") from None
    rows = [{k: v for k, v in r.items() if k not in ("run", "folders")} for r in rows]  # the run's metrics stay in its folder
    for folder in args.kip_sets:
        path = os.path.join(folder, "distilled.npz")
        for protocol in ("dc", "dsa"):
            print(f"== KIP set {folder}, protocol {protocol}")
            r = evaluate(path, protocol, m, data_dir, cache_dir, progress)
            metrics = os.path.join(folder, "metrics.json")
            krr = io.read_json(metrics).get("test_accuracy") if os.path.exists(metrics) else None
            rows.append({**r, "method": f"KIP ({os.path.basename(folder.rstrip('/')).split('-seed')[0]})", "krr": krr})
    if not rows:
        raise SystemExit("matching.py: error: nothing to run (check --ipc against the mode's sizes)")
    ds_name = rows[0]["dataset"]
    ev = protocols.with_overrides(protocols.load("dsa"), **m["evaluation"])[1]
    body = render(rows) + f"""

{ds_name} test accuracy (%) of finite networks trained on each distilled set ("set": mean over the
set's networks, then mean ± std over distillation seeds) and on class-balanced random subsets of
real training images of the same size under the same protocol (mean ± std over subsets x networks).
"set - random": the difference of the means. Protocols (`kip protocols dc`, `kip protocols dsa`):
DC's evaluation for DC sets, DSA's (also DM's) for DSA and DM sets, as each paper reports; both
train DC's instance-norm ConvNet of width 128 on the set's hard labels for 1000 (+ 1) epochs, `dc`
with DC's MNIST augmentation, `dsa` with DSA's. Overrides of the cards here: {', '.join(f'{k} = {v}' for k, v in ev.items()) or 'none'}
(and per images per class: {m['size_evaluation']}; the papers average 100 networks (DC, DSA) or 20 (DM);
baseline_subsets: the random real subsets). Nothing is chosen on the test set (the cards fix every hyper-parameter).
"distillation": the matching network is DC's ConvNet at the stated width (the papers: 128), with
the stated real images per class per matching step (the papers: 256) and outer iterations (the
papers: DC / DSA 1000, DM 20000) and DC / DSA loops (outer / inner; the papers: 1 / 1 at 1 per class,
10 / 50 at 10); image lr 0.1 (DC, DSA) / 1 (DM), SGD momentum 0.5, real-image
start; DSA and DM augment with DSA's strategy for the data set. "KRR": the set's test accuracy by
kernel regression with the {m['kernel']} kernel at the end of its run ({', '.join(f'{k} per class: {v}, 4 networks of width 128' for k, v in m.get('size_kernel', {}).items()) or 'every size'}; KIP
rows: under the kernel it was distilled with). "min / run": wall-clock minutes of the distillation steps on this machine.
""" + ("\nSmoke run (--quick): tiny networks, few iterations; it checks the pipeline, not the methods.\n"
       if mode == "quick" else "")
    name = f"matching_{ds_name}" + ("_quick" if mode == "quick" else "")
    report.write_results(name, f"DC, DSA and DM on {ds_name} under their papers' evaluation protocols", body,
                         {"mode": mode, "rows": rows}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
