"""NeurIPS 2021 Table 1 (Nguyen et al., arXiv 2107.13034): KIP and Label Solve with the exact
ConvNet NTK on MNIST / Fashion-MNIST / SVHN / CIFAR-10 / CIFAR-100 at 1 / 10 / 50 images per
class, ZCA on and off, labels learned on and off; our KRR test accuracy beside the published one.

    python experiments/neurips2021_table1.py --gpu [--data-dir DIR] [--datasets mnist cifar10]   # the paper's grid (GPU / TPU)
    python experiments/neurips2021_table1.py --quick                                             # embedded digits, exact ConvNet3, 1 and 5 per class, minutes

The full grid is the two sweep files experiments/sweeps/neurips2021_table1{,_label_solve}.toml
(`kip sweep` runs them the same way); every cell is a run folder under --runs-dir, reused when
finished and resumed when interrupted, cells in parallel over the visible devices. One cell of
the full grid takes days on a 2-core CPU, so there is no CPU mode: on a CPU,
experiments/kip_convnet.py gives the MNIST rows with the random-feature kernel.
Writes results/neurips2021_table1[_digits_quick].{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure(x64=True)  # an entry point: before numpy, scipy and JAX load; kernel runs solve in float64

import dataclasses
import os
import sys
import time

from kip import InputError, data, report, sweep, table

SWEEPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweeps")
# arXiv 2107.13034 Table 1 (draft; ../shared/REFERENCE.md): KIP-ConvNet kernel (KRR) accuracy (%) and
# Label Solve with the ConvNet kernel, no ZCA (the authors' release metadata), by images per class.
PUBLISHED_KIP = {"mnist": (96.5, 99.1, 99.5), "fashion_mnist": (76.7, 88.8, 91.0), "svhn_cropped": (64.3, 80.9, 84.0),
                 "cifar10": (63.4, 75.5, 79.7), "cifar100": (33.3, 49.5, None)}
PUBLISHED_LS = {"mnist": (73.4, 96.4, 98.3), "fashion_mnist": (65.3, 80.8, 86.9), "svhn_cropped": (21.1, 40.1, 69.2),
                "cifar10": (26.3, 46.3, 57.4)}
IPCS = (1, 10, 50)
# --quick: the embedded 8x8 digits with the exact ConvNet3 NTK (three 2x2 pools take 8x8 to 1x1).
QUICK = {"kip": dict(kernel="convnet3", steps=10, target_batch=50, eval_every=5),
         "label_solve": dict(kernel="convnet3"), "grid": dict(dataset=["digits"], ipc=[1, 5], zca=[False, True])}


def published(figures: dict, dataset: str, ipc: int) -> float | None:
    values = figures.get(dataset)
    return values[IPCS.index(ipc)] if values and ipc in IPCS else None


def grids(mode: str, runs_dir: str, datasets: list[str] | None) -> tuple[sweep.Sweep, sweep.Sweep]:
    """The KIP and Label Solve sweeps of this mode, cells under runs_dir."""
    if mode == "quick":
        kip = sweep.Sweep("kip", "distill", QUICK["kip"], {**QUICK["grid"], "learn_labels": [True, False]}, runs_dir)
        ls = sweep.Sweep("label_solve", "label-solve", QUICK["label_solve"], dict(QUICK["grid"]), runs_dir)
        return kip, ls
    kip, ls = (sweep.load(os.path.join(SWEEPS, f), out=runs_dir)
               for f in ("neurips2021_table1.toml", "neurips2021_table1_label_solve.toml"))
    if datasets:
        unknown = set(datasets) - set(kip.grid["dataset"])
        if unknown:
            raise InputError(f"--datasets: {sorted(unknown)} not in the table (choose from {', '.join(kip.grid['dataset'])})")
        kip, ls = (dataclasses.replace(s, grid={**s.grid, "dataset": [d for d in s.grid["dataset"] if d in datasets]})
                   for s in (kip, ls))
    return kip, ls


def table_row(records: dict[str, list[dict]], dataset: str, ipc: int) -> dict:
    """The table's row of (dataset, ipc): the sweeps' records of its cells, by setting, and the
    published figures."""
    def cell(command: str, **point) -> dict | None:
        return next((r for r in records[command] if all(r["cell"].get(k) == v for k, v in point.items())), None)

    kips = {(z, ll): cell("distill", dataset=dataset, ipc=ipc, zca=z, learn_labels=ll)
            for z in (True, False) for ll in (True, False)}
    return {"dataset": dataset, "ipc": ipc, "kip": kips,
            "best": max((r for r in kips.values() if r), key=lambda r: r["test_accuracy"], default=None),
            "label_solve": {z: cell("label-solve", dataset=dataset, ipc=ipc, zca=z) for z in (True, False)},
            "published_kip": published(PUBLISHED_KIP, dataset, ipc), "published_ls": published(PUBLISHED_LS, dataset, ipc)}


def pct(record: dict | None, key: str = "test_accuracy") -> str:
    return "-" if record is None or record.get(key) is None else f"{100 * record[key]:.2f}"


def pub(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


COLUMNS = [
    table.Column("data set", lambda r: r["dataset"]), table.Column("images/class", lambda r: str(r["ipc"])),
    table.Column("published KIP-ConvNet", lambda r: pub(r["published_kip"])),
    table.Column("ours KIP, best", lambda r: f"**{pct(r['best'])}**"),
    *(table.Column(f"{'ZCA' if z else 'no ZCA'}, {'learned' if ll else 'fixed'} labels",
                   lambda r, k=(z, ll): pct(r["kip"][k])) for z in (True, False) for ll in (True, False)),
    table.Column("published Label Solve (no ZCA)", lambda r: pub(r["published_ls"])),
    table.Column("ours Label Solve, no ZCA", lambda r: pct(r["label_solve"][False])),
    table.Column("ours Label Solve, ZCA", lambda r: pct(r["label_solve"][True])),
    # the class-balanced real images KIP started from, without ZCA, before any step
    table.Column("real images (no ZCA)", lambda r: pct(r["kip"][(False, False)], "initial_test_accuracy")),
]


def main() -> None:
    args, mode, runs_dir = report.experiment_args(
        __doc__, "neurips2021_table1", "the paper's full grid (exact ConvNet NTK; GPU / TPU)",
        "the embedded digits, exact ConvNet3 NTK, 1 and 5 per class: a smoke run",
        extra=lambda p: p.add_argument("--datasets", nargs="+", help="only these columns of the table (--gpu)"))
    if mode == "cpu":
        sys.exit("neurips2021_table1.py: the exact-kernel grid takes days per cell on a CPU: pass --gpu on a GPU / TPU "
                 "machine, --quick for the digits smoke run, or run experiments/kip_convnet.py (random features) here")
    started = time.time()
    try:
        kip_sweep, ls_sweep = grids(mode, runs_dir, args.datasets)
        data_dirs = {}
        for name in kip_sweep.grid["dataset"]:
            path = os.path.join(args.data_dir, f"{name}.npz")
            data_dirs[name] = args.data_dir if os.path.exists(path) else None
            data.load(name, data_dirs[name])  # DIR/NAME.npz where it exists, else TFDS; a missing one stops here
    except InputError as e:
        sys.exit(f"neurips2021_table1.py: {e}")
    records = {}
    for s in (kip_sweep, ls_sweep):
        per_dataset = [dataclasses.replace(s, base={**s.base, "data_dir": data_dirs[d]}, grid={**s.grid, "dataset": [d]})
                       for d in s.grid["dataset"]]
        records[s.command] = [r for one in per_dataset for r in sweep.run_sweep(one, progress=not args.no_progress, overwrite=args.overwrite)]
        sweep.write_summary(s, records[s.command], args.provenance)
    rows = [table_row(records, **point) for point in table.grid(dataset=kip_sweep.grid["dataset"], ipc=kip_sweep.grid["ipc"])]

    kip_opts = ", ".join(f"{k}={v}" for k, v in kip_sweep.base.items())
    body = table.markdown(COLUMNS, rows) + f"""

KRR test accuracy (%) on the full test set. KIP: `kip distill` with {kip_opts}; Label Solve: `kip label-solve`
with {", ".join(f"{k}={v}" for k, v in ls_sweep.base.items())} over the whole training set. "best" is the best of our
four KIP settings (the published figure is the paper's best setting too). "real images" is the class-balanced
random real subset KIP started from. Published figures: arXiv 2107.13034 Table 1 (draft version; Label Solve from
the authors' release metadata).{" --quick runs the embedded 8x8 digits (not a data set of the paper) with ConvNet3 and few steps: a smoke run, not comparable with the published column." if mode == "quick" else ""}
Every cell's run folder is under {runs_dir}/; total time {(time.time() - started) / 60:.1f} min on this machine
(finished cells are reused, so a resumed run counts only what it ran).
"""
    report.write_results("neurips2021_table1" + ("_digits_quick" if mode == "quick" else ""),
                         "NeurIPS 2021 Table 1: KIP and Label Solve with ConvNet kernels", body,
                         {"mode": mode, "kip": records["distill"], "label_solve": records["label-solve"],
                          "published_kip": PUBLISHED_KIP, "published_label_solve": PUBLISHED_LS},
                         results_dir=args.results_dir, code=args.provenance)


if __name__ == "__main__":
    main()
