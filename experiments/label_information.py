"""How much of a learned-label set's accuracy its images carry: each distilled set by KRR under one
kernel with its own labels, with one-hot rows of their argmax in place of them (what hard-label
protocols such as `dc` train on), and the real images it started from with their true labels; beside
its labels' statistics. A set whose images alone do no better than its real starts cannot beat random
real subsets under a hard-label protocol, however well it does with its labels.

    python experiments/label_information.py runs/kip_convnet_60min_seeds --data-dir ../shared/datasets
    python experiments/label_information.py --quick     # digits: one KIP-FC set with learned labels, a smoke run

Configuration only: the sets are the .npz files named and every */distilled.npz below the folders (a set that does not record the
training images it started from is refused); `kip.run`'s KRR evaluator judges all three label choices
of a set on one kernel and one test set. Writes results/label_information_<dataset>.{md,json}.
"""

from __future__ import annotations

from kip import entry

entry.configure(x64=True)  # an entry point: float64 ridge solves, as `kip evaluate`

import dataclasses
import glob
import os

import numpy as np

from kip import cells, data, krr, release, report, run, table

# on CPU the method zoo's KRR kernel: each evaluation computes the random features of the 10,000 test images
# anew, ~13 minutes at 8 x 256 on one core here, ~1/8 of that at 4 x 128
MODES = {"cpu": dict(dataset="mnist", kernel=run.KernelOptions("rf-convnet3", rf_models=4, rf_width=128)),
         "gpu": dict(dataset="mnist", kernel=run.KernelOptions("convnet3")),
         "quick": dict(dataset="digits", kernel=run.KernelOptions("fc1"))}


def label_statistics(labels: np.ndarray, true: np.ndarray) -> dict:
    """The label rows (n, C) against the classes of the images they started from (n,): how many rows'
    argmax is still that class, how many classes the argmaxes cover, the largest |label| and the
    share of each row's absolute mass off its true class (mean over rows)."""
    n, c = labels.shape
    mass = np.abs(labels)
    return {"argmax_is_source_class": int(np.sum(np.argmax(labels, 1) == true)), "rows": n,
            "classes_covered": int(len(np.unique(np.argmax(labels, 1)))), "classes": c,
            "max_abs_label": float(mass.max()),
            "off_class_mass": float(np.mean(1 - mass[np.arange(n), true] / mass.sum(1)))}


def judge(path: str, m: dict, data_dir: str | None) -> dict:
    """One set's KRR test accuracy with its labels, with hard labels, with its sources' classes, and of its
    real starts (the images it started from, with their classes)."""
    s = release.load_distilled_for(path, m["dataset"], data_dir)
    if np.any(s.sources < 0):
        raise SystemExit(f"label_information.py: error: {path} does not record the training images it started from")
    ds = s.dataset
    problem = run.prepare(ds, m["kernel"], preprocessing=s.preprocessing)
    evaluate = run.make_evaluator(problem, krr.DEFAULT_REG, krr.DEFAULT_BLOCK)
    true = ds.y_train[s.sources]
    hard = data.hard_labels(s.labels, ds.num_classes, dtype=problem.dtype)
    accuracy = lambda images, labels: float(evaluate(images, labels)["test_accuracy"])
    by_source = data.one_hot(true, ds.num_classes, dtype=problem.dtype)
    return {"own_labels": accuracy(s.images, s.labels), "hard_labels": accuracy(s.images, hard),
            "source_labels": accuracy(s.images, by_source),
            "real_start": accuracy(problem.x_train[s.sources], by_source),
            "labels": label_statistics(np.asarray(s.labels), true), "kernel_of_set": s.kernel, "ipc": len(true) // ds.num_classes}


def set_name(path: str) -> str:
    """A run's folder name for its distilled.npz; 'CELL step-N' for a kept snapshot CELL/snapshots/step-N.npz."""
    folder, file = os.path.split(os.path.abspath(path))
    if file == "distilled.npz":
        return os.path.basename(folder)
    cell = os.path.dirname(folder) if os.path.basename(folder) == "snapshots" else folder
    return f"{os.path.basename(cell)} {file.removesuffix('.npz')}"


def quick_sets(runs_dir: str, overwrite: bool) -> list[str]:
    out = os.path.join(runs_dir, "digits-fc1-ipc1-learn")
    cells.distill_cell(run.DistillConfig(ipc=1, steps=50, learn_labels=True), out, overwrite=overwrite)
    return [os.path.join(out, "distilled.npz")]


COLUMNS = table.shown(("set", "name"), ("images/class", "ipc"), ("KRR, own labels", "own"),
                      ("KRR, hard labels (argmax)", "hard"), ("KRR, source classes", "source"), ("KRR, real start images", "start"),
                      ("hard - real start", "gain"), ("argmax = source class", "argmax"), ("classes covered", "covered"),
                      ("max abs label", "max"), ("off-class label mass", "off"))


def main() -> None:
    def extra(parser):
        parser.add_argument("dirs", nargs="*", help="folders searched (recursively) for distilled.npz files, or .npz sets")

    args, mode, runs_dir = report.experiment_args(__doc__, "label_information", "the exact ConvNet3 NTK",
                                                  "digits, one KIP-FC set made here", extra=extra)
    m = MODES[mode]
    data_dir = None if m["dataset"] == "digits" else args.data_dir
    paths = quick_sets(runs_dir, args.overwrite) if mode == "quick" else [
        p for d in args.dirs for p in ([d] if d.endswith(".npz") else
                                       sorted(glob.glob(os.path.join(d, "**", "distilled.npz"), recursive=True)))]
    if not paths:
        raise SystemExit(f"label_information.py: error: no distilled.npz under {', '.join(args.dirs) or '(no folders given)'}")
    rows = []
    for path in paths:
        print(f"== {path}")
        rows.append({"path": path, "name": set_name(path), **judge(path, m, data_dir)})
        print(f"   own labels {100 * rows[-1]['own_labels']:.2f}%, hard {100 * rows[-1]['hard_labels']:.2f}%, "
              f"real start {100 * rows[-1]['real_start']:.2f}%")
    shown = [{"name": r["name"], "ipc": r["ipc"], "own": f"{100 * r['own_labels']:.1f}", "hard": f"**{100 * r['hard_labels']:.1f}**",
              "source": f"{100 * r['source_labels']:.1f}",
              "start": f"{100 * r['real_start']:.1f}", "gain": f"{100 * (r['hard_labels'] - r['real_start']):+.1f}",
              "argmax": f"{r['labels']['argmax_is_source_class']} / {r['labels']['rows']}",
              "covered": f"{r['labels']['classes_covered']} / {r['labels']['classes']}",
              "max": f"{r['labels']['max_abs_label']:.2f}", "off": f"{100 * r['labels']['off_class_mass']:.0f}%"} for r in rows]
    k = m["kernel"]
    kernel = k.name + (f" ({k.rf_models} x {k.rf_width} random features, seed {k.seed})" if k.name.startswith("rf-") else "")
    body = table.markdown(COLUMNS, shown) + f"""

{m['dataset']} test accuracy (%) of kernel ridge regression (ridge {krr.DEFAULT_REG:g} x tr(K)/n) under
{kernel}, one kernel for every set and column: from each set's images with its own labels ("own labels"),
with centred one-hot rows of their argmax ("hard labels": what a hard-label protocol such as `dc` trains
on), with one-hot rows of the classes of the images each started from ("source classes": the same where
every argmax is still its source's class), and from the real training images it started from with their true labels ("real start": a
class-balanced random real subset). "hard - real start": what the distilled images carry without their
labels. Labels: how many rows' argmax is still the class of the image the row started from, how many
classes the argmaxes cover, the largest |label|, and the mean share of a row's absolute label mass off
that class. Nothing here is chosen; every number is a test accuracy of a fixed set.
""" + ("\nSmoke run (--quick): a 50-step KIP-FC set; it checks the pipeline, not the method.\n" if mode == "quick" else "")
    name = f"label_information_{m['dataset']}" + ("_quick" if mode == "quick" else "")
    report.write_results(name, f"What a distilled set's images carry without its learned labels ({m['dataset']})", body,
                         {"mode": mode, "kernel": dataclasses.asdict(k), "rows": rows},
                         results_dir=args.results_dir, code=args.provenance)
    print(body)


if __name__ == "__main__":
    main()
