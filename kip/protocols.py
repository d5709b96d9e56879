"""Named evaluation protocols: how the field trains finite networks on a distilled set, as data.

A protocol card (a TOML file: the built-in ones in `kip/protocol_cards/`, or the user's own)
names the network, preprocessing, label handling, loss, optimiser and schedule, weight decay,
batch, length, augmentation, validation and early stopping, the number of networks, and the
published figures it reproduces. `resolve` turns a card, a data set and a set size into the
network and `kip.train.TrainConfig` that train under it; `with_overrides` changes fields and
records which.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

from kip import InputError, augment, models, optim, train

CARDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol_cards")
PREPROCESSING = ("standardize", "kip-zca", "zca", "none")
LABELS = ("hard", "set")
SCHEDULES = ("cosine", "constant", "dc")
WEIGHT_DECAY_FORMS = ("coupled", "penalty")
SECTIONS = ("network", "data", "labels", "training", "validation", "evaluation")


@dataclasses.dataclass(frozen=True)
class Published:
    """One published figure a protocol reproduces (test accuracy, %)."""

    method: str  # e.g. "random real", "DC", "KIP-ConvNet"
    dataset: str
    ipc: int
    accuracy: float
    std: float | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """A per-data-set (and per-size: `ipc`, None for every size) row of a protocol's table (RFAD's
    best lr, label scale and wd; DC's MNIST augmentation); fields left None keep the card's values."""

    dataset: str
    ipc: int | None = None
    lr: float | None = None
    label_scale: float | None = None
    weight_decay: float | None = None
    augment: str | None = None
    epochs: int | None = None
    steps: int | None = None


ROW_FIELDS = ("lr", "label_scale", "weight_decay", "augment", "epochs", "steps")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """An evaluation protocol (see the module docstring); field by field as in the card files."""

    name: str
    description: str
    source: str = ""
    reproduces: tuple[str, ...] = ()
    # [network]
    model: str = "convnet3"
    width: int = 128
    norm: str = "none"
    pad_to: int | None = None  # the first conv pads smaller images to pad_to x pad_to (DC: MNIST 28 -> 32)
    growth: int = 1  # ConvNet block i has width * growth**i channels (FRePo's Conv: 2)
    parameterization: str = "standard"
    weight_init: str = "normal"  # 'normal' (W_std sqrt 2, b_std 0.1), 'torch' (PyTorch's default) or 'lecun' (flax's)
    # [data]
    preprocess: str = "standardize"  # for sets without their own preprocessing, and random subsets alone
    zca_strength: float = 0.1
    # [labels]
    labels: str = "hard"  # 'hard': one-hot of the argmax of the set's labels; 'set': the set's own rows
    label_scale: float = 1.0
    centre: bool = False  # train and predict with f(x) - f0(x), f0 the initial network
    # [training]
    loss: str = "xent"
    mse_weight: float = 0.5  # the MSE is mse_weight * mean over classes (KIP 1/2, RFAD 1)
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    lr: float = 0.01
    schedule: str = "cosine"  # 'cosine', 'constant', or 'dc': epochs + 1 passes, lr x 0.1 and momentum
    #                            reset once epoch epochs // 2 + 1 is done (DC's evaluate_synset)
    warmup_steps: int = 0  # cosine: a linear rise from 0 over these steps first (FRePo: 500)
    final_lr: float = 0.0  # cosine: where it ends, as a fraction of lr (FRePo: 0.01)
    weight_decay: float = 0.0
    weight_decay_form: str = "coupled"  # 'coupled': gradient += wd (w - ref); 'penalty': loss += wd |w - ref|^2
    decay_to: str = "zero"  # ref: 'zero' or 'init'
    batch_size: int = 256
    epochs: int = 0  # passes over the set (0: count `steps` instead)
    steps: int = 0
    augment: str = "none"  # 'none', 'flip', 'crop', 'flip_crop', 'dsa:STRATEGY', 'dc:STRATEGY'
    drop_last: bool = False  # PyTorch's DataLoader keeps an epoch's last partial batch
    # [validation]
    val_size: int = 0  # validation images from train (without the set's sources); 0: none
    val_per_class: int = 0  # ... or this many per class
    eval_every: int = 0
    patience: int = 0
    keep_best: bool = False
    tune_lr: tuple[float, ...] = ()  # a grid searched on validation (empty: no search)
    tune_weight_decay: tuple[float, ...] = ()
    # [evaluation]
    networks: int = 5  # networks trained per set (the paper's count)
    baseline_subsets: int = 5  # class-balanced random real subsets evaluated beside every set
    hyperparameters: tuple[Hyperparameters, ...] = ()
    published: tuple[Published, ...] = ()
    overridden: tuple[str, ...] = ()  # fields set by `with_overrides`: a per-size row never replaces them

    def check(self) -> None:
        """Raises `InputError` naming the first bad field."""
        for field, value, choices in (("preprocess", self.preprocess, PREPROCESSING), ("labels", self.labels, LABELS),
                                      ("schedule", self.schedule, SCHEDULES),
                                      ("weight_decay_form", self.weight_decay_form, WEIGHT_DECAY_FORMS),
                                      ("model", self.model, tuple(models.PRESETS)), ("norm", self.norm, models.NORMS),
                                      ("weight_init", self.weight_init, models.INITS)):
            if value not in choices:
                raise InputError(f"protocol {self.name}: {field} must be one of {', '.join(choices)}, got {value!r}")
        if (self.epochs > 0) == (self.steps > 0):
            raise InputError(f"protocol {self.name}: give exactly one of epochs and steps (got {self.epochs}, {self.steps})")
        for field in ("width", "batch_size", "networks"):
            if getattr(self, field) < 1:
                raise InputError(f"protocol {self.name}: {field} must be at least 1, got {getattr(self, field)}")
        if self.baseline_subsets < 0 or self.val_size < 0 or self.val_per_class < 0:
            raise InputError(f"protocol {self.name}: baseline_subsets and validation sizes must be >= 0")
        if (self.keep_best or self.patience or self.tune_lr or self.tune_weight_decay) and not (self.val_size or self.val_per_class):
            raise InputError(f"protocol {self.name}: early stopping and tuning need a validation split (val_size or val_per_class)")
        if self.labels == "hard" and self.loss != "xent":
            raise InputError(f"protocol {self.name}: hard labels are trained with loss 'xent'")
        augment.check(_augment_spec(self.augment))
        _train_config(self, steps=1).check()

    def describe(self) -> str:
        """One paragraph: the network, data, labels, training and what it reproduces."""
        length = f"{self.epochs} epochs" if self.epochs else f"{self.steps} steps"
        if self.schedule == "dc":
            length = f"{self.epochs} + 1 epochs, lr x 0.1 and momentum reset after epoch {self.epochs // 2 + 1}"
        stop = f", early stopping (every {self.eval_every} steps, patience {self.patience}, best kept)" if self.patience else ""
        tune = f", lr {list(self.tune_lr)} x weight decay {list(self.tune_weight_decay)} tuned on validation" \
            if self.tune_lr or self.tune_weight_decay else ""
        warm = f", {self.warmup_steps} warm-up steps" if self.warmup_steps else ""
        floor = f" to {self.final_lr:g} lr" if self.final_lr else ""
        grow = f" x {self.growth}^block" if self.growth != 1 else ""
        momentum = f", momentum {self.momentum:g}" if self.optimizer == "sgd" else ""
        return (f"{self.model} width {self.width}{grow} ({self.norm} norm, {self.weight_init} init"
                f"{', first conv padded to ' + str(self.pad_to) if self.pad_to else ''}); {self.preprocess}; "
                f"labels {self.labels}{' x ' + format(self.label_scale, 'g') if self.label_scale != 1 else ''}"
                f"{', outputs centred on the initial network' if self.centre else ''}; {self.loss}; {self.optimizer} "
                f"lr {self.lr:g} ({self.schedule}{floor}{warm}){momentum}, weight decay {self.weight_decay:g} "
                f"({self.weight_decay_form}, towards {self.decay_to}); batch {self.batch_size}, {length}; "
                f"augmentation {self.augment}{stop}{tune}; {self.networks} networks per set")


def _augment_spec(text: str) -> tuple[str, ...]:
    """A card's augmentation field as a `kip.augment` spec: 'none' -> (), 'flip_crop' -> ('flip', 'crop')."""
    if text == "none":
        return ()
    return (text,) if ":" in text else tuple(text.split("_"))


def coupled_weight_decay(p: Protocol, weight_decay: float) -> float:
    """A weight decay in the card's form as the trainer's coupled one: d/dw of wd |w - ref|^2 is
    2 wd (w - ref)."""
    return 2.0 * weight_decay if p.weight_decay_form == "penalty" else weight_decay


def _train_config(p: Protocol, steps: int) -> train.TrainConfig:
    milestones, factor, reset = optim.STEP_MILESTONES, optim.STEP_FACTOR, False
    schedule = p.schedule
    if schedule == "dc":  # decay once epoch epochs // 2 + 1 (0-based) has been trained; counted in steps: halfway
        at = (p.epochs // 2 + 2) / (p.epochs + 1) if p.epochs else 0.5
        schedule, milestones, factor, reset = "step", (at,), 0.1, True
    return train.TrainConfig(
        steps=steps, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer, momentum=p.momentum, nesterov=p.nesterov,
        schedule=schedule, warmup_steps=p.warmup_steps, final_lr=p.final_lr, milestones=milestones, step_factor=factor,
        reset_momentum=reset,
        weight_decay=coupled_weight_decay(p, p.weight_decay), decay_to=p.decay_to, loss=p.loss, mse_weight=p.mse_weight,
        label_scale=p.label_scale, centre=p.centre, augment=_augment_spec(p.augment), drop_last=p.drop_last,
        eval_every=p.eval_every, keep_best=p.keep_best, patience=p.patience)


def steps_for(p: Protocol, n: int) -> tuple[int, int]:
    """(training steps, steps per epoch) for a set of n images."""
    per_epoch = train.epoch_steps(n, p.batch_size, p.drop_last)
    if not p.epochs:
        return p.steps, per_epoch
    return (p.epochs + (p.schedule == "dc")) * per_epoch, per_epoch


def for_set(p: Protocol, dataset: str, ipc: int) -> tuple[Protocol, Hyperparameters | None]:
    """The card with its hyper-parameter rows for this data set (matched by name or name prefix,
    e.g. 'cifar10' for 'cifar10_jpeg_lossy') and images per class applied, and the most specific
    of them: the data set's rows for every size first, then its rows for this size, each field a
    row gives replacing the card's. Fields the user overrode (`with_overrides`) keep the user's value."""
    rows = [h for h in p.hyperparameters
            if (dataset == h.dataset or dataset.startswith(h.dataset + "_")) and h.ipc in (None, ipc)]
    if not rows:
        return p, None
    rows.sort(key=lambda h: h.ipc is not None)  # stable: the card's order within each kind
    changes: dict = {}
    for row in rows:
        for k in ROW_FIELDS:
            if getattr(row, k) is not None and k not in p.overridden:
                changes[k] = getattr(row, k)
                if k in ("epochs", "steps"):  # a length replaces the other kind of length
                    changes[{"epochs": "steps", "steps": "epochs"}[k]] = 0
    return dataclasses.replace(p, **changes), rows[-1]


def resolve(p: Protocol, num_classes: int, n: int) -> tuple[models.Network, train.TrainConfig]:
    """The network (for `num_classes` outputs) and training configuration of protocol p for a
    set of n images (apply `for_set` first for per-size tables)."""
    p.check()
    steps, _ = steps_for(p, n)
    return network(p, num_classes), _train_config(p, steps)


def network(p: Protocol, num_classes: int, width: int | None = None, norm: str | None = None, head: bool = True,
            im2col: bool = False) -> models.Network:
    """Protocol p's network for `num_classes` outputs; `width` / `norm` (None: the card's) for the
    distillation methods that train the card's network at another size, `head` False for its
    embedding, `im2col` for convolutions as patch matmuls (second-order gradients on CPU)."""
    return models.build(p.model, num_classes, width or p.width, p.parameterization, norm or p.norm,
                        weight_init=p.weight_init, pad_to=p.pad_to if p.model.startswith("convnet") else None,
                        head=head, im2col=im2col, growth=p.growth)


def augment_strategy(p: Protocol, dataset: str, ipc: int) -> str | None:
    """The DSA strategy protocol p's per-size table applies to `dataset` at `ipc` (None: none)."""
    spec = for_set(p, dataset, ipc)[0].augment
    return spec.split(":", 1)[1] if spec and spec.startswith("dsa:") else None


# --------------------------------------------------------------------------- cards


def names() -> list[str]:
    """The built-in protocols, by name."""
    return sorted(f[:-5] for f in os.listdir(CARDS_DIR) if f.endswith(".toml"))


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _build(cls, entry: Any, where: str):
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a table")
    unknown = sorted(set(entry) - set(_fields(cls)))
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_fields(cls))})")
    try:
        built = cls(**entry)
    except TypeError as e:
        raise InputError(f"{where}: {e}") from None
    _check_types(built, where)
    return built


def parse(spec: dict, origin: str) -> Protocol:
    """A protocol from a card's TOML tables; `InputError` for an unknown section or field or a
    value of the wrong type (named with `origin`)."""
    flat: dict[str, Any] = {}
    fields = _fields(Protocol)
    for key, value in spec.items():
        if key in SECTIONS and (isinstance(value, dict) or key not in fields):  # 'labels' is a section and a field
            if not isinstance(value, dict):
                raise InputError(f"{origin}: [{key}] must be a table")
            items = value.items()
        elif key in ("hyperparameters", "published"):
            cls = Hyperparameters if key == "hyperparameters" else Published
            flat[key] = tuple(_build(cls, e, f"{origin}: [[{key}]]") for e in value)
            continue
        else:
            items = [(key, value)]
        for name, v in items:
            if name not in fields or name in ("hyperparameters", "published", "overridden"):
                raise InputError(f"{origin}: unknown field {name!r}" + (f" in [{key}]" if key in SECTIONS else ""))
            flat[name] = tuple(v) if isinstance(v, list) else v
    for name in ("name", "description"):
        if name not in flat:
            raise InputError(f"{origin}: the card needs a {name!r}")
    p = Protocol(**flat)
    _check_types(p, origin)
    p.check()
    return p


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _check_types(obj: Any, origin: str) -> None:
    """`InputError` unless each field holds its annotated type ('float | None', 'tuple[float, ...]', ...)."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("tuple["):
            element = _TYPES.get(kind[6:].split(",")[0].strip())
            ok = isinstance(value, tuple) and (element is None or all(isinstance(v, element) for v in value))
        else:
            expected = _TYPES.get(kind.split(" ")[0])
            ok = expected is None or (isinstance(value, expected) and not (expected is not bool and isinstance(value, bool)))
        if not ok:
            raise InputError(f"{origin}: field {f.name!r} must be {kind}, got {value!r}")


def load(name_or_path: str) -> Protocol:
    """A built-in protocol by name, or a card file (.toml) by path."""
    path = name_or_path if name_or_path.endswith(".toml") else os.path.join(CARDS_DIR, f"{name_or_path}.toml")
    if not os.path.exists(path):
        if name_or_path.endswith(".toml"):
            raise InputError(f"{name_or_path}: no such protocol card")
        raise InputError(f"unknown protocol {name_or_path!r}; choose one of {', '.join(names())} or give a .toml card")
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid TOML protocol card ({e})") from None
    return parse(spec, path if name_or_path.endswith(".toml") else f"protocol {name_or_path}")


OVERRIDABLE = ("width", "epochs", "steps", "networks", "baseline_subsets", "lr", "weight_decay", "label_scale",
               "batch_size", "augment", "val_size", "val_per_class", "patience", "eval_every", "model", "norm",
               "preprocess", "zca_strength", "tune_lr", "tune_weight_decay", "keep_best")


def with_overrides(p: Protocol, **changes: Any) -> tuple[Protocol, dict]:
    """The protocol with `changes` (None values ignored), checked, and the changes that differ
    from the card ({field: value}), to be recorded beside every result."""
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - set(OVERRIDABLE))
    if unknown:
        raise InputError(f"protocol {p.name}: {unknown[0]!r} cannot be overridden (overridable: {', '.join(OVERRIDABLE)})")
    if "epochs" in changes and changes["epochs"] and "steps" not in changes:
        changes["steps"] = 0
    if "steps" in changes and changes["steps"] and "epochs" not in changes:
        changes["epochs"] = 0
    recorded = {k: v for k, v in changes.items() if getattr(p, k) != v}
    new = dataclasses.replace(p, **changes, overridden=tuple(sorted(set(p.overridden) | set(changes))))
    _check_types(new, f"protocol {p.name}")
    new.check()
    return new, recorded


def listing(name: str | None = None) -> str:
    """`kip protocols [NAME]`: each built-in protocol with what it reproduces, or one card in full."""
    if name is None:
        lines = []
        for n in names():
            p = load(n)
            lines += [f"{p.name}: {p.description}", *(f"    reproduces: {r}" for r in p.reproduces), ""]
        lines.append("kip evaluate --method train --protocol NAME [--width W --epochs E ...] trains under one; "
                     "kip protocols NAME shows its card")
        return "\n".join(lines)
    p = load(name)
    lines = [f"{p.name}: {p.description}", f"source: {p.source}", "", p.describe(), ""]
    lines += [f"reproduces: {r}" for r in p.reproduces]
    if p.hyperparameters:
        lines += ["", "per data set / size (fields left out keep the card's values):"]
        for h in p.hyperparameters:
            values = ", ".join(f"{k} {getattr(h, k)}" for k in ROW_FIELDS if getattr(h, k) is not None)
            lines.append(f"    {h.dataset}{'' if h.ipc is None else f', {h.ipc} per class'}: {values}")
    if p.published:
        lines += ["", "published figures (test accuracy %):"]
        lines += [f"    {x.method}, {x.dataset}, {x.ipc} per class: {x.accuracy}"
                  + ("" if x.std is None else f" ± {x.std}") + f" ({x.source})" for x in p.published]
    return "\n".join(lines)
