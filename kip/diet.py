"""Whole Data Diet runs behind `kip score`, `kip prune` and `kip train`: scores averaged over
independently trained networks (resumable per network), pruned subsets, and networks trained on them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from kip import InputError, data, io, models, plots, preprocess, prune, scores, train, transfer

MAX_SEED = 2**32 - 1  # PRNG seeds are unsigned 32-bit


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A network and how to train it on a data set; by default the Data Diet recipe
    (`train.DATA_DIET`). `epochs` count passes over the full training set: a subset is trained
    for the same number of steps. None picks by the data: `default_model`, and crop + flip
    for colour images, crop only for greyscale ones (digits are not mirror-symmetric); width
    64 for conv nets and ResNet-18, 1024 for FC nets."""

    model: str | None = None
    width: int | None = None
    epochs: int = train.DATA_DIET_EPOCHS
    batch_size: int = train.DATA_DIET.batch_size
    lr: float = train.DATA_DIET.lr
    weight_decay: float = train.DATA_DIET.weight_decay
    schedule: str = train.DATA_DIET.schedule
    augment: tuple[str, ...] | None = None

    def resolve(self, ds: data.Dataset) -> tuple[models.Network, train.TrainConfig, dict]:
        """The network, its training configuration on all of ds's training set, and both as a dict."""
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        name = self.model or default_model(ds.image_shape)
        width = self.width or (1024 if name.startswith("fc") else 64)
        model = models.build(name, ds.num_classes, width)
        model.check_input_shape(ds.image_shape)
        augment = self.augment if self.augment is not None else (("flip", "crop") if ds.image_shape[-1] == 3 else ("crop",))
        steps = self.epochs * train.epoch_steps(len(ds.y_train), self.batch_size)
        config = dataclasses.replace(train.DATA_DIET, steps=steps, batch_size=self.batch_size, lr=self.lr,
                                     weight_decay=self.weight_decay, schedule=self.schedule, augment=tuple(augment))
        config.check()
        described = {"model": name, "width": model.width, "epochs": self.epochs, "train_config": dataclasses.asdict(config)}
        return model, config, described


def default_model(image_shape: tuple[int, ...]) -> str:
    """A sensible network for images of `image_shape`: ResNet-18 for colour images of at least
    16x16 (CIFAR), the ConvNet for other images of at least 8x8 (MNIST, digits), FC1 otherwise."""
    h, w, c = image_shape if len(image_shape) == 3 else (0, 0, 0)
    if min(h, w) >= 16 and c == 3:
        return "resnet18"
    return "convnet" if min(h, w) >= 8 else "fc1"


def fingerprint(ds: data.Dataset) -> str:
    """A short hash of the training images and labels in their order: score files and subsets
    name the data set they index."""
    digest = hashlib.sha256(np.ascontiguousarray(ds.x_train).tobytes())
    digest.update(np.ascontiguousarray(ds.y_train).tobytes())
    return digest.hexdigest()[:16]


def standardised(ds: data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images standardised per channel with the full training set's statistics
    (float32), the same for every subset."""
    prep = preprocess.fit(ds.x_train)
    return prep.apply(ds.x_train).astype(np.float32), prep.apply(ds.x_test).astype(np.float32)


def _check_runs(runs: int, seed: int) -> None:
    if runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    if seed < 0 or seed + runs - 1 > MAX_SEED:
        raise InputError(f"--runs {runs} from --seed {seed} needs seeds {seed}..{seed + runs - 1}, but seeds "
                         f"must lie in 0..{MAX_SEED}")


# --------------------------------------------------------------------------- kip score


def score_run(
    ds: data.Dataset,
    score: str,
    out: str,
    recipe: Recipe = Recipe(),
    runs: int = 10,
    epoch: int = 20,
    seed: int = 0,
    never_learned: str = "inf",
    last_layer_only: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """`kip score`: `score` of every training example of ds, averaged over `runs` networks
    (run i from seed + i: its own init and data order) trained by `recipe` to `epoch`. Each
    run is saved in OUT-runs/ as it finishes and reused by the same command. Writes `out` (.npz:
    'scores' (n,) in ds's order, 'labels' (n,) they were computed with, 'per_run' (runs, n),
    'meta' JSON) and a histogram beside it (.png). Returns the meta."""
    if score not in scores.SCORES:
        raise InputError(f"unknown score {score!r}; choose one of {', '.join(scores.SCORES)}")
    _check_runs(runs, seed)
    model, config, described = recipe.resolve(ds)
    if not 0 <= epoch <= recipe.epochs:
        raise InputError(f"--epoch must lie in 0..{recipe.epochs} (the --epochs trained), got {epoch}")
    meta = {"score": score, "dataset": ds.name, "n": int(len(ds.y_train)), "fingerprint": fingerprint(ds),
            "epoch": epoch, "seed": seed, **described,
            "never_learned": never_learned if score == "forgetting" else None,
            "last_layer_only": last_layer_only if score == "grand" else None}
    meta = json.loads(json.dumps(meta))  # as it reads back from a file (tuples become lists)
    if os.path.exists(out) and not overwrite:
        old = load_scores(out)[2]
        if {k: v for k, v in old.items() if k != "runs"} != meta:
            raise InputError(f"{out} holds scores of other options: pass --overwrite to replace them, or another --out")
    x_train, _ = standardised(ds)
    runs_dir = os.path.splitext(out)[0] + "-runs"
    log(f"kip score: {score} of {len(x_train)} {ds.name} training examples, {runs} runs of {described['model']} "
        f"(width {described['width']}) to epoch {epoch} of {recipe.epochs}; runs kept in {runs_dir}/")
    per_run = []
    for i in tqdm(range(runs), desc=score, unit="run", disable=not progress, file=sys.stderr):
        def compute(i=i):
            return scores.score_network(model, x_train, ds.y_train, config, jax.random.PRNGKey(seed + i), (score,), epoch,
                                        never_learned, last_layer_only, progress)
        per_run.append(io.cached(os.path.join(runs_dir, f"run-{i:03d}.npz"), {**meta, "run": i}, compute, overwrite)[score])
    per_run = np.stack(per_run)
    mean = per_run.mean(axis=0)
    meta["runs"] = runs
    io.write_npz(out, scores=mean, labels=ds.y_train, per_run=per_run, meta=np.array(json.dumps(meta)))
    plots.score_histogram(os.path.splitext(out)[0] + ".png", mean,
                          f"{score} of {ds.name} training examples, mean of {runs} runs at epoch {epoch} "
                          f"({described['model']})", score)
    finite = np.isfinite(mean)
    log(f"wrote {out}: {score} mean {mean[finite].mean():.4g}, median {np.median(mean):.4g}"
        + (f", {int((~finite).sum())} never learned (inf)" if not finite.all() else ""))
    return meta


def load_scores(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """A `kip score` file: scores (n,), labels (n,), meta."""
    arrays = io.read_npz(path)
    missing = [k for k in ("scores", "labels", "meta") if k not in arrays]
    if missing:
        raise InputError(f"{path}: not a kip score file (missing {', '.join(missing)})")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        raise InputError(f"{path}: unreadable meta") from None
    if arrays["scores"].shape != arrays["labels"].shape or arrays["scores"].ndim != 1 or len(arrays["scores"]) != meta.get("n"):
        raise InputError(f"{path}: scores and labels must be one per training example")
    return arrays["scores"], arrays["labels"], meta


# --------------------------------------------------------------------------- kip prune


def prune_run(score_file: str, out: str, keep: float, offset: float = 0.0, class_balanced: bool = False,
              random: bool = False, seed: int = 0, log: Callable[[str], None] = print) -> np.ndarray:
    """`kip prune`: the indices kept from the data set of `score_file` (highest scores after an
    offset; random with `random`; per class in proportion with `class_balanced`), written to
    `out` (.npz: 'indices' sorted, 'meta' naming the data set). Returns the indices."""
    values, labels, meta = load_scores(score_file)
    if random:
        values = prune.random_scores(len(values), seed)
    indices = prune.keep_highest(values, keep, offset, labels if class_balanced else None, seed)
    kept = {"dataset": meta["dataset"], "n": meta["n"], "fingerprint": meta["fingerprint"],
            "score": "random" if random else meta["score"], "keep": keep, "offset": offset,
            "class_balanced": class_balanced, "seed": seed, "scores": None if random else os.path.abspath(score_file)}
    io.write_npz(out, indices=indices.astype(np.int64), meta=np.array(json.dumps(kept)))
    log(f"wrote {out}: {len(indices)} of {meta['n']} {meta['dataset']} examples kept "
        f"({'random' if random else 'highest ' + meta['score']}{', class-balanced' if class_balanced else ''}"
        f"{f', after the {offset:g} hardest' if offset else ''})")
    return indices


def load_subset(path: str, ds: data.Dataset) -> tuple[np.ndarray, dict]:
    """The indices of a `kip prune` file, checked against ds (same data in the same order)."""
    arrays = io.read_npz(path)
    if "indices" not in arrays or "meta" not in arrays:
        raise InputError(f"{path}: not a kip subset file (needs 'indices' and 'meta'; made by kip prune)")
    meta = json.loads(str(arrays["meta"]))
    n, fp = len(ds.y_train), fingerprint(ds)
    if meta.get("n") != n or meta.get("fingerprint") != fp:
        raise InputError(f"{path} indexes {meta.get('dataset')!r} ({meta.get('n')} examples, data fingerprint "
                         f"{meta.get('fingerprint')}), not this {ds.name!r} ({n} examples, fingerprint {fp}): "
                         "another data set or another order")
    idx = arrays["indices"]
    if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n \
            or len(np.unique(idx)) != len(idx):
        raise InputError(f"{path}: indices must be distinct integers in 0..{n - 1}")
    return idx, meta


# --------------------------------------------------------------------------- kip train


def train_run(
    ds: data.Dataset,
    subsets: list[str],
    recipe: Recipe = Recipe(),
    seeds: int = 1,
    seed: int = 0,
    out: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """`kip train`: networks trained by `recipe` on each subset (`kip prune` files; none: the
    full training set) for the full data's number of steps, tested on ds's test set. Writes
    `out` (JSON) and, for subsets, the pruning curve beside it (.png). Returns {'rows': [...]}."""
    model, config, described = recipe.resolve(ds)
    x_train, x_test = standardised(ds)
    targets = np.asarray(data.one_hot(ds.y_train, ds.num_classes, centred=False))
    loaded = [load_subset(path, ds) for path in subsets] or [(np.arange(len(ds.y_train)), {"score": "full", "keep": 1.0})]
    rows = []
    for path, (idx, meta) in zip(subsets or [None], loaded):
        log(f"{path or 'full data'}: {len(idx)} of {len(ds.y_train)} examples; {seeds} x {described['model']} for "
            f"{config.steps} steps")
        result = transfer.train_networks(model, x_train[idx], targets[idx], x_test, ds.y_test, config, seeds, seed,
                                         progress, log)
        rows.append({"subset": path, **{k: meta.get(k) for k in ("score", "keep", "offset", "class_balanced")},
                     "size": int(len(idx)), **result})
        log(f"  test accuracy {100 * result['test_accuracy_mean']:.2f} ± {100 * result['test_accuracy_std']:.2f}%")
    report = {"dataset": ds.name, "test_size": int(len(ds.y_test)), **described, "seeds": seeds, "seed": seed, "rows": rows}
    if out:
        io.write_json(out, report)
        if subsets:
            curves = {}
            for r in rows:
                label = r["score"] + (", class-balanced" if r["class_balanced"] else "") + \
                    (f", offset {r['offset']:g}" if r["offset"] else "")
                curves.setdefault(label, []).append((r["keep"], r["test_accuracy_mean"], r["test_accuracy_std"]))
            plots.pruning_curve(os.path.splitext(out)[0] + ".png", curves, None,
                                f"{ds.name}: {described['model']} trained on pruned subsets ({seeds} seed(s))")
    return report
