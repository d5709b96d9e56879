"""A distilled set judged by finite networks trained on it under a named protocol
(`kip.protocols`), always beside class-balanced random real subsets of the same size trained the
same way; and by SLaPkNN. Networks are trained many per call (`kip.train.fit_many`) and each
finished network is kept in a cache folder, so an interrupted evaluation resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kip import InputError, TrainingDiverged, data, io, knn, models, preprocess, protocols, release, report, train

RESULT_KEYS = ("test_accuracy", "best_test_accuracy", "final_val_accuracy", "best_val_accuracy", "best_step",
               "steps_run", "diverged", "seconds")


def seed_key(seed: int, i: int) -> jax.Array:
    """The key of the i-th network of a run with base `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), i)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Job:
    """One network to train: on sets[set_index], from `key`, with this lr and weight decay."""

    set_index: int
    key: tuple[int, ...]  # the PRNG key's data, so that it can be hashed and stored
    lr: float
    weight_decay: float


def train_and_test(
    model: models.Network,
    config: train.TrainConfig,
    sets: list[tuple[np.ndarray, np.ndarray]],
    jobs: list[Job],
    x_test: np.ndarray,
    y_test: np.ndarray,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    cache_dir: str | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Trains one network per job on its set (images (n, ...), targets (n, C); all sets of one
    size) and tests it on x_test (m, ...) against int y_test (m,). Returns per job {'test_accuracy'
    (final network), 'best_test_accuracy' (the network at its best validation accuracy, with
    `keep_best`), 'final_val_accuracy', 'best_val_accuracy', 'best_step', 'steps_run',
    'diverged', 'seconds'}. With `cache_dir`, each finished network's result is kept there, keyed
    by the model, configuration, data, key and hyper-parameters, and reused."""
    if vectorize is None:
        vectorize = jax.default_backend() != "cpu"
    common = {"model": repr(model), "config": dataclasses.asdict(config), "test": _digest(x_test, y_test),
              "val": None if val is None else _digest(*val)}
    set_digests = [_digest(*s) for s in sets]
    metas = [{**common, "data": set_digests[j.set_index], "key": list(j.key), "lr": j.lr, "weight_decay": j.weight_decay}
             for j in jobs]
    paths = [None if cache_dir is None else os.path.join(
        cache_dir, hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()[:20] + ".npz") for m in metas]
    results: list[dict | None] = [None] * len(jobs)
    for i, (path, meta) in enumerate(zip(paths, metas)):
        if path and os.path.exists(path):
            stored = io.read_npz(path)
            if str(stored.get("meta")) == json.dumps(meta, sort_keys=True):
                results[i] = {k: stored[k].item() for k in RESULT_KEYS}
    todo = [i for i, r in enumerate(results) if r is None]
    groups = [todo] if vectorize and todo else [[i] for i in todo]
    for group in groups:
        images = np.stack([sets[jobs[i].set_index][0] for i in group])
        targets = np.stack([sets[jobs[i].set_index][1] for i in group])
        keys = np.stack([np.asarray(jobs[i].key, np.uint32) for i in group])
        fitted = train.fit_many(model, images, targets, config, keys, np.array([jobs[i].lr for i in group]),
                                np.array([jobs[i].weight_decay for i in group]), *(val or (None, None)),
                                per_network_data=True, vectorize=vectorize, progress=progress,
                                desc=f"{len(group)} network(s)")
        offsets = None if fitted.init_variables is None else jnp.stack(  # the initial networks' outputs, once
            [train.predict(model, jax.tree_util.tree_map(lambda a: a[k], fitted.init_variables), x_test)
             for k in range(len(group))])
        final = train.accuracy_many(model, fitted.variables, x_test, y_test, offsets, vectorize)
        best = final if fitted.best_variables is None else train.accuracy_many(
            model, fitted.best_variables, x_test, y_test, offsets, vectorize)
        diverged = np.atleast_1d(fitted.diverged)
        for k, i in enumerate(group):
            val_final = float(fitted.val[-1]["accuracy"][k]) if fitted.val else float("nan")
            r = {"test_accuracy": float(final[k]), "best_test_accuracy": float(best[k]),
                 "final_val_accuracy": val_final,
                 "best_val_accuracy": val_final if fitted.best_accuracy is None else float(fitted.best_accuracy[k]),
                 "best_step": int(fitted.steps_run[k] if fitted.best_step is None else fitted.best_step[k]),
                 "steps_run": int(fitted.steps_run[k]), "diverged": bool(diverged[k]),
                 "seconds": fitted.seconds / len(group)}
            if r["diverged"]:
                r.update(test_accuracy=float("nan"), best_test_accuracy=float("nan"))
            results[i] = r
            if paths[i]:
                io.write_npz(paths[i], meta=np.array(json.dumps(metas[i], sort_keys=True)),
                             **{k: np.array(v) for k, v in r.items()})
        if log:
            log(f"  trained {len(results) - results.count(None)} of {len(jobs)} networks")
    return results  # type: ignore[return-value]


def _key_data(key: jax.Array) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                            else key).ravel())


def train_networks(
    model: models.Network,
    images: np.ndarray,
    labels: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: train.TrainConfig,
    seeds: int = 5,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    cache_dir: str | None = None,
) -> dict:
    """Trains `seeds` networks (keys `seed_key(seed, i)`) on images (n, H, W, C) with labels
    (n, C), each tested on x_test (m, ...) against int labels y_test (m,).

    Returns {'test_accuracy_mean', 'test_accuracy_std' (over seeds, ddof 1; 0 for one seed),
    'test_accuracies', 'seconds_per_network' (the median wall clock)}. Raises `TrainingDiverged`
    if a loss becomes NaN or inf. With `cache_dir`, finished networks are kept and reused."""
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    jobs = [Job(0, _key_data(seed_key(seed, i)), config.lr, config.weight_decay) for i in range(seeds)]
    results = train_and_test(model, config, [(images, labels)], jobs, x_test, y_test, cache_dir=cache_dir,
                             progress=progress)
    for i, r in enumerate(results):
        if r["diverged"]:
            raise TrainingDiverged(f"network {i} (lr {config.lr:g}): the loss became NaN/inf - try a smaller --lr")
        if log:
            log(f"  seed {i}: test accuracy {100 * r['test_accuracy']:.2f}% ({r['seconds']:.1f} s)")
    accuracies = [r["test_accuracy"] for r in results]
    mean, std = report.mean_std(accuracies)
    return {"test_accuracy_mean": mean, "test_accuracy_std": std, "test_accuracies": accuracies,
            "seconds_per_network": float(np.median([r["seconds"] for r in results]))}


def train_networks_stable(model: models.Network, images: np.ndarray, labels: np.ndarray, x_test: np.ndarray,
                          y_test: np.ndarray, config: train.TrainConfig, lr_factors: tuple[float, ...] = (1.0, 0.1, 0.01),
                          **kwargs) -> dict:
    """`train_networks` at the largest of `config.lr` x `lr_factors` at which no network's loss
    becomes NaN/inf: a choice made from the training loss alone (no validation or test data), for
    sets whose learned labels are too large for the default lr. Returns its dict plus 'lr'.
    Raises `TrainingDiverged` when every lr diverges."""
    for factor in lr_factors:
        lr_config = dataclasses.replace(config, lr=config.lr * factor)
        try:
            return {**train_networks(model, images, labels, x_test, y_test, lr_config, **kwargs), "lr": lr_config.lr}
        except TrainingDiverged as e:
            last = e
    raise last


# --------------------------------------------------------------------------- a set under a protocol


def random_subsets(key: jax.Array, labels: np.ndarray, num_classes: int, per_class: int, count: int) -> np.ndarray:
    """(count, per_class * C) indices: `count` class-balanced random subsets of the training labels."""
    return np.stack([data.balanced_subset(jax.random.fold_in(key, r), labels, num_classes, per_class)
                     for r in range(count)]) if count else np.zeros((0, per_class * num_classes), np.int64)


def validation_indices(key: jax.Array, labels: np.ndarray, num_classes: int, p: protocols.Protocol,
                       exclude: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray | None:
    """The protocol's validation split of the training set (`val_per_class` per class, or
    `val_size` in all), none of it in `exclude` (the set's sources, the random subsets); None
    when the protocol has no validation. pool: drawn from these rows only (e.g. those the set's
    distillation held out), `InputError` when they are too few."""
    if not (p.val_size or p.val_per_class):
        return None
    keep = np.setdiff1d(np.arange(len(labels)) if pool is None else np.asarray(pool, np.int64), exclude)
    if p.val_per_class:
        return keep[data.balanced_subset(key, labels[keep], num_classes, p.val_per_class)]
    if pool is None:
        return keep[data.validation_split(key, len(keep), p.val_size)]
    if p.val_size > len(keep):
        raise InputError(f"validation: {p.val_size} images asked, the set's held-out rows leave {len(keep)}")
    return keep[np.asarray(jax.random.permutation(key, len(keep)))[:p.val_size]]


def targets_for(p: protocols.Protocol, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The protocol's training targets from a set's label rows (n, C): one-hot of the argmax
    for hard labels, the rows themselves otherwise."""
    if p.labels == "hard":
        return np.asarray(data.hard_labels(labels, num_classes, centred=False))
    return np.asarray(labels, np.float32)


def _summary(results: list[dict], reported: str) -> dict:
    accs = [r[reported] for r in results]
    finite = [a for a in accs if np.isfinite(a)]
    mean, std = report.mean_std(finite) if finite else (float("nan"), float("nan"))
    return {"test_accuracies": accs, "mean": mean, "std": std, "diverged": sum(r["diverged"] for r in results),
            "final_test_accuracies": [r["test_accuracy"] for r in results],
            "best_steps": [r["best_step"] for r in results], "val_accuracies": [r["best_val_accuracy"] for r in results],
            "seconds_per_network": float(np.median([r["seconds"] for r in results]))}


def evaluate_set(
    images: np.ndarray | None,
    labels: np.ndarray | None,
    ds: data.Dataset,
    prep: preprocess.Preprocessing,
    protocol: protocols.Protocol,
    sources: np.ndarray | None = None,
    seed: int = 0,
    networks_per_subset: int = 1,
    cache_dir: str | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    ipc: int | None = None,
    val_exclude: np.ndarray | None = None,
    val_pool: np.ndarray | None = None,
) -> dict:
    """A set (images (n, H, W, C) in `prep`'s space, label rows (n, C)) trained on under `protocol`
    (its per-size hyper-parameters applied), beside `protocol.baseline_subsets` class-balanced
    random real subsets of the same size (`networks_per_subset` networks each), preprocessed
    alike; images None with `ipc`: the random subsets alone. The validation split (for tuning and
    early stopping) excludes `sources` (the set's source images in the training set, when known),
    the subsets' images and `val_exclude` (e.g. the sources of other sets evaluated beside it, so
    that all share one split and their random subsets' networks); with `val_pool` it is drawn from
    those rows alone (the rows the set's distillation held out: `val_indices`). Reports the test
    accuracy of the final networks, or with `keep_best` of each at its best validation accuracy."""
    num_classes = ds.num_classes
    n = ipc * num_classes if images is None else len(images)
    ipc = n // num_classes
    p, row = protocols.for_set(protocol, ds.name, ipc)
    model, config = protocols.resolve(p, num_classes, n)
    key = jax.random.PRNGKey(seed)
    subsets = random_subsets(jax.random.fold_in(key, 1), ds.y_train, num_classes, ipc, p.baseline_subsets) \
        if n % num_classes == 0 else np.zeros((0, n), np.int64)
    if images is None and not len(subsets):
        raise InputError("nothing to evaluate: no set and no random subsets")
    known = np.asarray([] if sources is None else sources, np.int64)
    known = known[known >= 0]
    extra = np.asarray([] if val_exclude is None else val_exclude, np.int64)
    val_idx = validation_indices(jax.random.fold_in(key, 2), ds.y_train, num_classes, p,
                                 np.concatenate([known, subsets.ravel(), extra[extra >= 0]]).astype(np.int64), val_pool)
    val = None if val_idx is None else (prep.apply(ds.x_train[val_idx]).astype(np.float32), ds.y_train[val_idx])
    real_labels = np.asarray(data.one_hot(ds.y_train, num_classes, centred=p.labels == "set"))
    sets = [] if images is None else [(np.asarray(images, np.float32), targets_for(p, labels, num_classes))]
    first = len(sets)  # the index of the first random subset
    sets += [(prep.apply(ds.x_train[idx]).astype(np.float32), targets_for(p, real_labels[idx], num_classes))
             for idx in subsets]
    for x, y in sets[:1]:
        train.check_training_set(model, x, y, config.loss)
    run = dict(x_test=prep.apply(ds.x_test).astype(np.float32), y_test=ds.y_test, val=val, cache_dir=cache_dir,
               vectorize=vectorize, progress=progress, log=log)
    log(f"protocol {p.name}: {p.describe()}")
    log(f"  {n} images, {config.steps} steps each; {len(subsets)} random real subsets of the same size; validation: "
        + ("none" if val is None else f"{len(val[1])} training images"
           + (" (of those the set's distillation held out)" if val_pool is not None else "")
           + f", none of the set's {len(known)} known sources or the subsets' images"))

    # (lr, weight decay in the card's form) per set; a grid search on validation where the card has one
    hparams, grids = [(p.lr, p.weight_decay)] * len(sets), [None] * len(sets)
    if p.tune_lr or p.tune_weight_decay:
        pairs = [(lr, wd) for lr in (p.tune_lr or (p.lr,)) for wd in (p.tune_weight_decay or (p.weight_decay,))]
        searches = ([(0, range(0, 1), "the set")] if first else []) + \
            ([(first, range(first, len(sets)), "the first random subset, for every subset")] if len(subsets) else [])
        for s, applies, name in searches:
            jobs = [_job(s, seed_key(seed, 10_000), p, lr, wd) for lr, wd in pairs]
            scores = [-1.0 if r["diverged"] else r["best_val_accuracy"] for r in train_and_test(model, config, sets, jobs, **run)]
            grid = [{"lr": lr, "weight_decay": wd, "val_accuracy": v} for (lr, wd), v in zip(pairs, scores)]
            chosen = pairs[int(np.argmax(scores))]  # the first of equals
            for t in applies:
                hparams[t], grids[t] = chosen, grid
            log(f"  tuned on validation, {name}: lr {chosen[0]:g}, weight decay {chosen[1]:g}")
    networks = p.networks if first else 0
    jobs = [_job(0, seed_key(seed, i), p, *hparams[0]) for i in range(networks)]
    jobs += [_job(s, seed_key(seed, 1000 * (s - first + 1) + i), p, *hparams[s])
             for s in range(first, len(sets)) for i in range(networks_per_subset)]
    results = train_and_test(model, config, sets, jobs, **run)
    reported = "best_test_accuracy" if config.keep_best else "test_accuracy"
    distilled = _summary(results[:networks], reported) if first else None
    baseline = _summary(results[networks:], reported) if len(subsets) else None
    result = {
        "protocol": p.name, "card": dataclasses.asdict(p), "hyperparameter_row": None if row is None else dataclasses.asdict(row),
        "train_config": dataclasses.asdict(config), "support_size": n, "ipc": ipc, "dataset": ds.name,
        "test_size": int(len(ds.y_test)),
        "reported": "the network at its best validation accuracy" if config.keep_best else "the final network",
        "set": None if distilled is None else {**distilled, "lr": hparams[0][0], "weight_decay": hparams[0][1],
                                               "tune_grid": grids[0]},
        "random": None if baseline is None else {**baseline, "subsets": len(subsets), "networks_per_subset": networks_per_subset,
                                                  "lr": hparams[-1][0], "weight_decay": hparams[-1][1], "tune_grid": grids[-1]},
        "difference": None if distilled is None or baseline is None else distilled["mean"] - baseline["mean"],
        "validation": {"size": 0 if val is None else int(len(val[1])), "excludes_sources": int(len(known)),
                       "excludes_subsets": int(subsets.size), "from_set_held_out": val_pool is not None},
        "published": [dataclasses.asdict(x) for x in p.published if x.dataset == ds.name and x.ipc == ipc],
    }
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}%"
    parts = ([f"set: {pct(distilled)} over {networks} network(s)"] if distilled else []) + \
        ([f"random real: {pct(baseline)} over {len(results) - networks}"] if baseline else []) + \
        ([f"difference {100 * result['difference']:+.2f} points"] if result["difference"] is not None else [])
    log("  " + "; ".join(parts))
    return result


def _job(set_index: int, key: jax.Array, p: protocols.Protocol, lr: float, weight_decay: float) -> Job:
    """A network of protocol p; the weight decay in the card's form, converted to the trainer's."""
    return Job(set_index, _key_data(key), float(lr), protocols.coupled_weight_decay(p, weight_decay))


def slapknn_run(distilled: str, dataset: str = data.DEFAULT_DATASET, data_dir: str | None = None,
                prep_recipe: str | None = None, k: int = knn.DEFAULT_K, layout: str = "auto",
                log: Callable[[str], None] = print) -> dict:
    """`kip evaluate --method slapknn`: SLaPkNN test accuracy with the distilled images as
    prototypes and their labels as soft labels, in the distilled set's preprocessed space."""
    loaded = release.load_distilled_for(distilled, dataset, data_dir, prep_recipe, layout=layout)
    ds, images, labels, prep = loaded.dataset, loaded.images, loaded.labels, loaded.preprocessing
    acc = knn.slapknn_accuracy(images, labels, prep.apply(ds.x_test), ds.y_test, k)
    log(f"{distilled}: {len(images)} prototypes, SLaPkNN (k = {min(k, len(images))}) {ds.name} test accuracy {100 * acc:.2f}%")
    return {"method": "slapknn", "test_accuracy": acc, "k": min(k, len(images)), "support_size": int(len(images)),
            "dataset": ds.name, "test_size": int(len(ds.y_test)), "preprocessing": loaded.note}


def protocol_run(
    distilled: str,
    dataset: str = data.DEFAULT_DATASET,
    data_dir: str | None = None,
    protocol: str = "kip",
    overrides: dict | None = None,
    matched: bool | None = False,
    recipe: str | None = None,
    zca_strength: float = preprocess.ZCA_STRENGTH,
    layout: str = "auto",
    seed: int = 0,
    networks_per_subset: int = 1,
    cache_dir: str | None = None,
    vectorize: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    size_overrides: dict[int, dict] | None = None,
    val_from_set: bool = False,
) -> dict:
    """`kip evaluate --method train`: a distilled set file (ours, the authors' or another
    codebase's, see `kip.release`) trained on under a protocol (a name or a card file) with
    `overrides` (recorded in the result), beside random real subsets (see `evaluate_set`);
    `size_overrides` {images per class: overrides} add to them for a set of that size.
    matched: train the finite network of the kernel the set was distilled with. val_from_set: the
    validation split is drawn from the rows the set's run held out (its `val_indices`): images its
    distillation never read (for MTT also its experts), on which to choose between sets."""
    from kip.kernels import rf

    code = report.provenance(allow_dirty=True)  # at the start: the tree may change while its networks train
    loaded = release.load_distilled_for(distilled, dataset, data_dir, recipe, zca_strength, layout)
    card = protocols.load(protocol)
    ipc = len(loaded.images) // loaded.dataset.num_classes
    overrides = {k: v for k, v in {**(overrides or {}), **(size_overrides or {}).get(ipc, {})}.items() if v is not None}
    if matched:
        if loaded.kernel is None:
            raise InputError(f"--matched: {distilled} does not say which kernel it was distilled with")
        arch = rf.parse(loaded.kernel) or loaded.kernel
        if arch not in models.PRESETS or overrides.get("model", arch) != arch:
            raise InputError(f"--matched: the set was distilled with {loaded.kernel}, which has no finite network here"
                             if arch not in models.PRESETS else f"--matched trains {arch}; leave out --model")
        overrides["model"] = arch
    p, recorded = protocols.with_overrides(card, **overrides)
    if val_from_set and (loaded.val_indices is None or not (p.val_size or p.val_per_class)):
        raise InputError(f"--val-from-set: {distilled} holds no held-out rows (val_indices: its run had no --val-size)"
                         if loaded.val_indices is None else f"--val-from-set: protocol {p.name} has no validation split "
                                                            "(give --val-size or --val-per-class)")
    if networks_per_subset < 1:
        raise InputError(f"--networks-per-subset must be at least 1, got {networks_per_subset}")
    log(f"{distilled}: {len(loaded.images)} images ({loaded.note}), distilled with {loaded.kernel or 'an unknown kernel'}"
        + (f"; matched transfer to the finite {p.model}" if matched else ""))
    result = evaluate_set(loaded.images, loaded.labels, loaded.dataset, loaded.preprocessing, p, loaded.sources, seed,
                          networks_per_subset, cache_dir, vectorize, progress, log,
                          val_pool=loaded.val_indices if val_from_set else None)
    result.update(method="train", distilled=distilled, overrides=recorded, matched=bool(matched), kernel=loaded.kernel,
                  preprocessing=loaded.note, seed=seed, environment=report.machine(code))
    return result


def judge_run(out: str, protocol: str, networks: int | None = None, data_dir: str | None = None, seed: int = 0,
              progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """A finished distillation run in `out` (any method) judged by `protocol_run` on its
    distilled.npz, the networks kept in OUT/networks (an interrupted evaluation resumes); the result
    is added to OUT/metrics.json under 'protocol' and returned."""
    metrics = io.read_json(os.path.join(out, "metrics.json"))
    dataset = metrics.get("config", {}).get("dataset", data.DEFAULT_DATASET)
    result = protocol_run(os.path.join(out, "distilled.npz"), dataset, data_dir, protocol,
                          {"networks": networks} if networks else {}, seed=seed, cache_dir=os.path.join(out, "networks"),
                          progress=progress, log=log)
    metrics["protocol"] = result
    io.write_json(os.path.join(out, "metrics.json"), metrics)
    return result
