"""Class-balanced random real subsets trained under a named evaluation protocol, beside the
protocol's published figures: the baseline every distilled set of that size must beat (DC, ICLR
2021, Table 1: MNIST 64.9 ± 3.5 / 95.1 ± 0.9 / 97.9 ± 0.2 at 1 / 10 / 50 images per class).

    python experiments/protocol_baselines.py --data-dir ../shared/datasets           # CPU: MNIST, dc, 1 and 10 per class
    python experiments/protocol_baselines.py --gpu --data-dir ../shared/datasets     # 1 / 10 / 50, 5 subsets x 4 networks
    python experiments/protocol_baselines.py --quick                                 # digits, tiny networks, a smoke run

Configuration only: each mode names the data set, the protocol, its overrides and the cells
(images per class, random subsets, networks per subset); `kip.transfer.evaluate_set` trains them,
keeping every finished network in networks/ beside --runs-dir (runs/networks by default, shared
with experiments/transfer.py, whose random subsets are the same networks): a run resumes. Writes
results/protocol_baselines_<dataset>.{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure()  # an entry point: before numpy, scipy and JAX load

import os
import time

from kip import data, preprocess, protocols, report, table, transfer

MODES = {
    "cpu": dict(dataset="mnist", overrides={}, cells=((1, 5, 1), (10, 3, 1))),
    "gpu": dict(dataset="mnist", overrides={}, cells=((1, 5, 4), (10, 5, 4), (50, 5, 4))),
    "quick": dict(dataset="digits", overrides=dict(width=8, epochs=20), cells=((1, 2, 1), (5, 2, 1))),
}


def main() -> None:
    args, mode, runs_dir = report.experiment_args(
        __doc__, "protocol_baselines", "1 / 10 / 50 per class, 5 subsets x 4 networks", "digits, tiny networks",
        extra=lambda p: p.add_argument("--protocol", default="dc", help="a protocol name or card (default: %(default)s)"))
    m = MODES[mode]
    ds = data.load(m["dataset"], None if m["dataset"] == "digits" else args.data_dir)
    card = protocols.load(args.protocol)
    cache_dir = os.path.join(os.path.dirname(runs_dir) or ".", "networks")  # shared with experiments/transfer.py
    started = time.time()

    def baselines(row: dict) -> dict:
        """The random real subsets of one size under the card (every network kept in the networks cache)."""
        p, recorded = protocols.with_overrides(card, baseline_subsets=row["subsets"], **m["overrides"])
        prep = preprocess.fit(ds.x_train, p.preprocess, p.zca_strength)
        r = transfer.evaluate_set(None, None, ds, prep, p, networks_per_subset=row["per_subset"], cache_dir=cache_dir,
                                  progress=not args.no_progress, ipc=row["ipc"])
        print(f"{row['ipc']} per class done ({time.time() - started:.0f} s so far)")
        return {**r, "overrides": recorded}

    points = [dict(ipc=ipc, subsets=subsets, per_subset=per_subset) for ipc, subsets, per_subset in m["cells"]]
    rows = table.run_rows(points, lambda point: {}, runs_dir, baselines)  # no runs: trained networks are the cache

    def published(r: dict) -> dict | None:
        return next((x for x in r["published"] if x["method"] == "random real"), None)

    def published_text(r: dict) -> str:
        pub = published(r)
        return "-" if pub is None else f"{pub['accuracy']}" + ("" if pub["std"] is None else f" ± {pub['std']}")

    columns = [
        table.Column("protocol", lambda r: r["protocol"]), table.Column("images/class", lambda r: str(r["ipc"])),
        table.Column("random real subsets, ours", lambda r: f"**{100 * r['random']['mean']:.1f} ± {100 * r['random']['std']:.1f}**"),
        table.Column("published", published_text),
        table.Column("ours - published", lambda r: "-" if published(r) is None
                     else f"{100 * r['random']['mean'] - published(r)['accuracy']:+.1f}"),
        table.Column("subsets x networks", lambda r: f"{r['random']['subsets']} x {r['random']['networks_per_subset']}"),
        table.Column("steps", lambda r: str(r["train_config"]["steps"])),
        table.Column("s / network", lambda r: f"{r['random']['seconds_per_network']:.0f}"),
    ]
    p = protocols.with_overrides(card, **m["overrides"])[0]
    overrides = {k: v for k, v in rows[0]["overrides"].items() if k != "baseline_subsets"}
    body = table.markdown(columns, rows) + f"""

{ds.name}: test accuracy (%) of networks trained on class-balanced random subsets of the real
training images (mean ± std over subsets x networks), under protocol `{p.name}`
({protocols.for_set(p, ds.name, 1)[0].describe()}; the networks per number are the rows' own).
{'Overrides of the card: ' + ', '.join(f'{k} = {v}' for k, v in overrides.items()) + '. ' if overrides else ''}The test set is the whole {ds.name} test set ({len(ds.y_test)} images); nothing is chosen on it.
Published: {'; '.join(p.reproduces)}. "s / network": wall-clock seconds to train and test one
network on this machine (compilation included; other jobs on the machine slow it: see the load).
""" + ("\nSmoke run (--quick): tiny networks, few epochs; it checks the pipeline, not the protocol.\n" if mode == "quick" else "")
    name = f"protocol_baselines_{ds.name}" + ("_quick" if mode == "quick" else "")
    report.write_results(name, f"Random real subsets under the `{p.name}` protocol on {ds.name}", body,
                         {"mode": mode, "rows": rows}, results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
