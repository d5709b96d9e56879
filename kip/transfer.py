"""A distilled set judged beyond its own kernel: finite networks trained on it (mean ± std test
accuracy over seeds, learning rate and weight decay optionally tuned on a validation split), and SLaPkNN."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable

import jax
import numpy as np

from kip import InputError, data, io, knn, models, preprocess, report, run, train


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Which finite network (see `kip.models.build`)."""

    model: str = "fc1"
    width: int = 1024
    parameterization: str = "standard"
    norm: str = "none"

    def build(self, num_classes: int) -> models.Network:
        return models.build(self.model, num_classes, self.width, self.parameterization, self.norm)


def seed_key(seed: int, i: int) -> jax.Array:
    """The key of the i-th network of a run with base `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), i)


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
    'test_accuracies', 'seconds_per_network' (the median wall clock: the first network of a
    shape also compiles the step)}.
    Raises `run.TrainingDiverged` if a loss becomes NaN or inf. With `cache_dir`, each finished
    network's accuracy is kept there (keyed by the model, config, seed and a digest of the
    data) and reused, so an interrupted run loses at most one network.
    """
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (images, labels, x_test, y_test)))
    meta = {"model": repr(model), "config": dataclasses.asdict(config), "data": digest.hexdigest()}
    accuracies, seconds = [], []
    for i in range(seeds):
        def one_network(i=i) -> dict:
            result = train.fit(model, images, labels, config, seed_key(seed, i), progress=progress, desc=f"seed {i}")
            if result.diverged:  # kept in the cache too, so a resumed run does not train it again
                return {"diverged": np.array(True), "seconds": np.array(result.seconds)}
            return {"accuracy": np.array(train.accuracy(model, result.variables, x_test, y_test)),
                    "seconds": np.array(result.seconds)}

        if cache_dir is None:
            result = one_network()
        else:
            result = io.cached(os.path.join(cache_dir, f"seed{seed}-{i}.npz"), {**meta, "seed": [seed, i]},
                               one_network, overwrite=True)
        if "diverged" in result:
            raise run.TrainingDiverged(f"network {i} (lr {config.lr:g}): the loss became NaN/inf - try a smaller --lr")
        accuracies.append(float(result["accuracy"]))
        seconds.append(float(result["seconds"]))
        if log:
            log(f"  seed {i}: test accuracy {100 * accuracies[-1]:.2f}% ({seconds[-1]:.1f} s)")
    mean, std = report.mean_std(accuracies)
    return {
        "test_accuracy_mean": mean,
        "test_accuracy_std": std,
        "test_accuracies": accuracies,
        "seconds_per_network": float(np.median(seconds)),
    }


def train_networks_stable(model: models.Network, images: np.ndarray, labels: np.ndarray, x_test: np.ndarray,
                          y_test: np.ndarray, config: train.TrainConfig, lr_factors: tuple[float, ...] = (1.0, 0.1, 0.01),
                          **kwargs) -> dict:
    """`train_networks` at the largest of `config.lr` x `lr_factors` at which no network's loss
    becomes NaN/inf: a choice made from the training loss alone (no validation or test data), for
    sets whose learned labels are too large for the default lr. Returns its dict plus 'lr'.
    Raises `run.TrainingDiverged` when every lr diverges. With `cache_dir`, each reduced lr keeps
    its networks in a subfolder `lr-x<factor>` so that no attempt overwrites another's."""
    cache_dir = kwargs.pop("cache_dir", None)
    for factor in lr_factors:
        lr_config = dataclasses.replace(config, lr=config.lr * factor)
        cache = cache_dir if cache_dir is None or factor == 1.0 else os.path.join(cache_dir, f"lr-x{factor:g}")
        try:
            return {**train_networks(model, images, labels, x_test, y_test, lr_config, cache_dir=cache, **kwargs),
                    "lr": lr_config.lr}
        except run.TrainingDiverged as e:
            last = e
    raise last


def random_subset(key: jax.Array, ds: data.Dataset, prep: preprocess.Preprocessing, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced random subset of real training images, preprocessed by `prep`, with
    centred one-hot labels: the baseline a distilled set of that size must beat.
    Returns images (per_class * C, H, W, C), labels (per_class * C, C)."""
    idx = data.balanced_subset(key, ds.y_train, ds.num_classes, per_class)
    return prep.apply(ds.x_train[idx]), np.asarray(data.one_hot(ds.y_train[idx], ds.num_classes))


def transfer_run(
    distilled: str,
    dataset: str = data.DEFAULT_DATASET,
    data_dir: str | None = None,
    zca: bool = False,
    network: NetworkConfig = NetworkConfig(),
    config: train.TrainConfig = train.TrainConfig(),
    seeds: int = 5,
    seed: int = 0,
    tune_grid: bool = False,
    val_size: int = train.DEFAULT_VAL_SIZE,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """`kip evaluate --method train`: trains `seeds` finite networks on a distilled set (ours
    or the authors' format) and tests them on the data set's whole test set, preprocessed
    like the distilled set. With `tune_grid`, first picks the learning rate (`train.LR_FACTORS`
    times config.lr) and weight decay (`train.WEIGHT_DECAYS`) by accuracy on `val_size` real
    training images (the networks never train on them; KIP may have used them as targets)."""
    config.check()
    ds, images, labels, prep, prep_note = run.load_distilled_for(distilled, dataset, data_dir, zca)
    model = network.build(ds.num_classes)
    train.check_training_set(model, images, labels, config.loss)
    x_test = prep.apply(ds.x_test)
    log(f"{distilled}: {len(images)} images; training {seeds} x {network.model} (width {network.width}, "
        f"{network.parameterization}{', ' + network.norm + ' norm' if network.norm != 'none' else ''}) for "
        f"{config.steps} steps on them; testing on {ds.name} ({len(ds.y_test)} images)")
    grid = None
    if tune_grid:
        val_idx = train.validation_split(jax.random.PRNGKey(seed), len(ds.y_train), val_size)
        config, grid = train.tune(model, images, labels, config, seed_key(seed, 0), prep.apply(ds.x_train[val_idx]),
                                  ds.y_train[val_idx], progress=progress, log=log)
        log(f"  chose lr {config.lr:g}, weight decay {config.weight_decay:g}")
    result = train_networks(model, images, labels, x_test, ds.y_test, config, seeds, seed, progress, log)
    result.update(method="train", **dataclasses.asdict(network), seeds=seeds, seed=seed, support_size=int(len(images)),
                  dataset=ds.name, test_size=int(len(ds.y_test)), preprocessing=prep_note,
                  train_config=dataclasses.asdict(config), tune_grid=grid, environment=run.environment())
    log(f"{distilled}: {network.model} trained on {len(images)} images, {ds.name} test accuracy "
        f"{100 * result['test_accuracy_mean']:.2f} ± {100 * result['test_accuracy_std']:.2f}% over {seeds} seed(s), "
        f"{result['seconds_per_network']:.1f} s per network")
    return result


def slapknn_run(
    distilled: str,
    dataset: str = data.DEFAULT_DATASET,
    data_dir: str | None = None,
    zca: bool = False,
    k: int = knn.DEFAULT_K,
    log: Callable[[str], None] = print,
) -> dict:
    """`kip evaluate --method slapknn`: SLaPkNN test accuracy with the distilled images as
    prototypes and their labels as soft labels, in the distilled set's preprocessed space."""
    ds, images, labels, prep, prep_note = run.load_distilled_for(distilled, dataset, data_dir, zca)
    acc = knn.slapknn_accuracy(images, labels, prep.apply(ds.x_test), ds.y_test, k)
    log(f"{distilled}: {len(images)} prototypes, SLaPkNN (k = {min(k, len(images))}) {ds.name} test accuracy {100 * acc:.2f}%")
    return {"method": "slapknn", "test_accuracy": acc, "k": min(k, len(images)), "support_size": int(len(images)),
            "dataset": ds.name, "test_size": int(len(ds.y_test)), "preprocessing": prep_note}
