"""The README's "## Results" table, generated from results/*.json.

Why: every figure in that table must come from a results file (results/NAME.json, written by
`kip.report.write_results` beside results/NAME.md), never be typed by hand, so that the README
cannot drift from what the scripts measured. `ROWS` is the table's spec, one `Row` per line: the
"what" text (settings may be typed there), an "ours" template in which every number is a field read
from a results file or computed from them by a named helper below (tests/test_readme_results.py
checks that it types none), the "reference" (published figures and goals as text; a template too,
for our own baselines shown there) and the results files the row links (it may read no others).

Fields are `{NAME[key][key]...:spec}`: NAME is results/NAME.json, `[*]` maps over a list and
`[k=v,...]` picks the one list element whose fields k print as v; or NAME is one of the row's
`values`, computed from the results by its function. Specs are Python's plus a `p` suffix, a
fraction as a percentage (`{x:.2p}` of 0.9056 prints 90.56); lists print joined by " / ",
`MeanStd` as "mean ± std", `Span` as "lo-hi".

    python tools/readme_results.py          # rewrite the table between the README's markers
    python tools/readme_results.py --check  # exit 1 if the README's table is not the generated one
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import string
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tools/ -> the repository
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
HEADER = ["| what | ours | reference | file |", "|---|---|---|---|"]


@dataclass(frozen=True)
class MeanStd:
    """A mean and its sample standard deviation; prints as "mean ± std" (a sign only on the mean)."""
    mean: float
    std: float

    def __neg__(self) -> MeanStd:
        return MeanStd(-self.mean, self.std)


@dataclass(frozen=True)
class Span:
    """The range of several figures; prints as "lo-hi"."""
    lo: float
    hi: float


def format_value(value: Any, spec: str) -> str:
    """`format(value, spec)`, with a `p` suffix for 100 x a fraction, lists joined by " / ", and
    MeanStd and Span printed with the spec applied to each part."""
    if isinstance(value, (list, tuple)):
        return " / ".join(format_value(v, spec) for v in value)
    if isinstance(value, MeanStd):
        return f"{format_value(value.mean, spec)} ± {format_value(value.std, spec.replace('+', ''))}"
    if isinstance(value, Span):
        return f"{format_value(value.lo, spec)}-{format_value(value.hi, spec)}"
    if spec.endswith("p") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(100 * value, spec[:-1] + "f")
    return format(value, spec)


def split_path(path: str) -> tuple[str, list[str]]:
    """"name[a][b]" -> ("name", ["a", "b"])."""
    match = re.fullmatch(r"(\w+)((?:\[[^\]]*\])*)", path)
    if match is None:
        raise ValueError(f"not a results path: {path!r}")
    return match[1], re.findall(r"\[([^\]]*)\]", match[2])


def select(items: list, query: str) -> Any:
    """The one element of `items` whose fields print as the query's "k=v,k=v" values."""
    wanted = dict(part.split("=", 1) for part in query.split(","))
    found = [x for x in items if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in wanted.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} elements match")
    return found[0]


def walk(obj: Any, keys: list[str], where: str, done: str = "") -> Any:
    """obj[keys[0]][keys[1]]...; a missing key raises a KeyError naming `where` (the file) and the key."""
    if not keys:
        return obj
    key, rest = keys[0], keys[1:]
    if key == "*" and isinstance(obj, list):
        return [walk(item, rest, where, f"{done}[{i}]") for i, item in enumerate(obj)]
    try:
        if isinstance(obj, list):
            obj = select(obj, key) if "=" in key else obj[int(key)]
        else:
            obj = obj[key]
    except (KeyError, IndexError, ValueError, TypeError) as error:
        why = f" ({error.args[0]})" if "=" in key and isinstance(error, KeyError) else ""
        raise KeyError(f"{where} has no {done}[{key}]{why}") from None
    return walk(obj, rest, where, f"{done}[{key}]")


class Results:
    """The results files of one folder, each read once; `results("NAME[k][k]")` is one value."""

    def __init__(self, directory: str):
        self.directory = directory
        self.read: set[str] = set()  # the files read since this was last cleared
        self._files: dict[str, Any] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.json")

    def file(self, name: str) -> Any:
        if name not in self._files:
            with open(self.path(name)) as f:
                self._files[name] = json.load(f)
        self.read.add(name)
        return self._files[name]

    def __call__(self, path: str) -> Any:
        name, keys = split_path(path)
        return walk(self.file(name), keys, self.path(name))


class ResultsFormatter(string.Formatter):
    """str.format whose fields are paths into results files or into a row's computed `values`."""

    def __init__(self, results: Results, values: dict[str, Callable[[Results], Any]] | None = None):
        super().__init__()
        self.results, self.values, self._computed = results, values or {}, {}

    def get_field(self, field_name: str, args, kwargs) -> tuple[Any, str]:
        name, keys = split_path(field_name)
        if name not in self.values:
            return walk(self.results.file(name), keys, self.results.path(name)), field_name
        if os.path.exists(self.results.path(name)):
            raise ValueError(f"value {name!r} has the name of a results file")
        if name not in self._computed:
            self._computed[name] = self.values[name](self.results)
        return walk(self._computed[name], keys, f"value {name!r}"), field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        return format_value(value, format_spec)


# Helpers for the figures rows compute (accuracies stay fractions until printed with `p`).

def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def mean_std(values: list[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof 1, as kip.report.mean_std; 0 for one value)."""
    return MeanStd(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def span(values: list[float]) -> Span:
    return Span(min(values), max(values))


def minutes(seconds: float) -> float:
    return seconds / 60


def group(groups: list[list[dict]], **fields) -> list[dict]:
    """Of benchmark cells grouped per configuration (a cell per seed), the group whose first cell has `fields`."""
    found = [g for g in groups if all(g[0].get(k) == v for k, v in fields.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} groups of cells have {fields}")
    return found[0]


def seed_differences(cells: list[dict], baseline: list[dict]) -> MeanStd:
    """Mean ± std over seeds of the test accuracy of `cells` minus that of `baseline` (same seeds)."""
    return mean_std([a["test_accuracy"] - b["test_accuracy"] for a, b in zip(cells, baseline, strict=True)])


def steps_taken(cell: dict) -> int:
    """Steps a benchmarks/rf_speed.py cell trained: the timed ones and the untimed warm-up chunk
    (in files from before its `steps_taken` field, the chunk is steps / the number of timed chunks)."""
    return cell.get("steps_taken", cell["steps"] + cell["steps"] // len(cell["step_s_all"]))


def kernel_speed_summary(r: Results) -> dict:
    """results/kernel_speed, ConvNet rows: the span of neural-tangents' time / ours per kernel, for
    the forward pass and for value and gradient; of its value-and-gradient peak memory / ours; and
    how many of those speed-ups meet the goal."""
    rows = [x for x in r("kernel_speed[rows]") if x["ours"]["kernel"] in CONVNETS]

    def speedups(kernels: tuple[str, ...], part: str) -> list[float]:
        return [x["reference"][f"{part}_s_per_entry"] / x["ours"][f"{part}_s_per_entry"]
                for x in rows if x["ours"]["kernel"] in kernels]
    every = speedups(CONVNETS, "forward") + speedups(CONVNETS, "forward_grad")
    memory = [x["reference"]["forward_grad_peak_bytes"] / x["ours"]["forward_grad_peak_bytes"] for x in rows]
    return {**{k: {p: span(speedups((k,), p)) for p in ("forward", "forward_grad")} for k in CONVNETS},
            "memory": span(memory), "met": sum(s >= KERNEL_SPEED_GOAL for s in every), "speedups": len(every)}


def rf_speed_summary(r: Results) -> dict:
    """benchmarks/rf_speed.py: rf-convnet3's KIP step against the banded exact NTK's at the largest
    support (results/rf_speed: target batch 100; rf_speed_tb500: 500) per exact precision, for the
    narrowest and the widest random features; and the per-seed differences in accuracy of the sets
    each kernel distilled with MSE (rf_speed), RFAD's Platt recipe (rf_speed_platt) and the
    empirical-NTK features (entk_probe, on rf_speed_platt's seeds)."""
    def speed(name: str, which: Callable) -> dict:
        cells = max(r(f"{name}[speed]"), key=lambda g: g[0]["support"])
        exact = {c["precision"]: c["step_s_median"] for c in cells if c["rf_models"] is None}
        rf = which([c for c in cells if c["rf_models"]], key=lambda c: c["rf_models"])
        return {**{p: exact[p] / rf["step_s_median"] for p in ("float64", "float32")}, "s": rf["step_s_median"],
                "support": rf["support"], "target_batch": rf["target_batch"],
                "label": f"{rf['rf_models']} x {rf['rf_width']}"}  # networks x width

    def accuracy(name: str) -> tuple[list, list, list, list]:
        """Cells per seed: exact NTK, exact NNGP, the narrowest and the widest random features."""
        groups = r(f"{name}[accuracy]")
        rf = sorted((g for g in groups if g[0]["rf_models"]), key=lambda g: g[0]["rf_models"])
        return group(groups, rf_models=None, get="ntk"), group(groups, rf_models=None, get="nngp"), rf[0], rf[-1]
    big, mid = speed("rf_speed_tb500", min), speed("rf_speed", min)
    wide = [speed("rf_speed", max), speed("rf_speed_tb500", max)]
    ntk, nngp, narrow, widest = accuracy("rf_speed")
    p_ntk, p_nngp, p_narrow, p_wide = accuracy("rf_speed_platt")
    entk, median = r("entk_probe[cells]"), statistics.median
    return {
        "big": big, "mid": mid, "narrow_s": span([mid["s"], big["s"]]), "narrow_label": mid["label"],
        "wide_label": wide[0]["label"], "wide": {p: span([w[p] for w in wide]) for p in ("float64", "float32")},
        "steps": steps_taken(ntk[0]), "seeds": len(ntk), "support": ntk[0]["support"],
        "target_batch": ntk[0]["target_batch"],
        "mse": {"wide": seed_differences(widest, nngp), "narrow": seed_differences(narrow, nngp),
                "below_ntk": span([-seed_differences(g, ntk).mean for g in (narrow, widest)]),
                "nngp": seed_differences(nngp, ntk)},
        "platt": {"ntk": mean([c["test_accuracy"] for c in p_ntk]), "wide": seed_differences(p_wide, p_nngp),
                  "narrow": seed_differences(p_narrow, p_nngp), "nngp_below": -seed_differences(p_nngp, p_ntk)},
        "entk": {"ntk": seed_differences(entk, p_ntk), "s": median(c["step_s_median"] for c in entk),
                 "times_exact": median(c["step_s_median"] for c in entk) / median(c["step_s_median"] for c in p_ntk)},
    }


def transfer_summary(r: Results) -> dict:
    """results/transfer_mnist: per protocol and distillation setting, the sets' finite-network
    accuracy (over the networks with one distillation seed, else over the seeds' means), and the
    same-protocol random real subsets'. The row names the settings rfad's validation accuracy
    chooses (1 per class: the one-hour sets, rf Platt then exact-NTK fine-tuning; 10 per class: rf,
    Platt loss, learned labels): should a rerun choose others, this raises."""
    rows = r("transfer_mnist[rows]")
    ipcs = sorted({x["ipc"] for x in rows})
    settings = {ipc: sorted({x["setting"] for x in rows if x["ipc"] == ipc}) for ipc in ipcs}
    named = [f"ipc{ipcs[0]}-rf-then-exact-platt-learn", f"ipc{ipcs[1]}-rf-platt-learn"]
    rf_platt = f"ipc{ipcs[0]}-rf-platt-learn"

    def cells(protocol: str, setting: str) -> list[dict]:
        return [x for x in rows if x["protocol"] == protocol and x["setting"] == setting]

    def score(protocol: str, setting: str) -> MeanStd:
        s = cells(protocol, setting)
        return MeanStd(s[0]["set"]["mean"], s[0]["set"]["std"]) if len(s) == 1 else mean_std([x["set"]["mean"] for x in s])

    def random_of(protocol: str, setting: str) -> MeanStd:
        random = cells(protocol, setting)[0]["random"]
        return MeanStd(random["mean"], random["std"])

    def below_random(protocol: str, setting: str) -> int:
        return sum(x["difference"] < 0 for x in cells(protocol, setting))
    for ipc, want in zip(ipcs, named):
        chosen = max(settings[ipc], key=lambda s: mean([v for x in cells("rfad", s) for v in x["set"]["val_accuracies"]]))
        if chosen != want:
            raise ValueError(f"transfer_mnist: rfad's validation now chooses {chosen}, not {want}: reword the row")
    others = [s for s in settings[ipcs[0]] if s not in (named[0], rf_platt)]
    return {
        "ipc": ipcs, "seeds": [len(cells("rfad", s)) for s in named], "others": len(others),
        "one_seed": max(len(cells("rfad", s)) for s in others),
        "rfad1": score("rfad", named[0]), "rfad1_rf": score("rfad", rf_platt), "rfad1_rf_seeds": len(cells("rfad", rf_platt)),
        "rfad1_others": span([score("rfad", s).mean for s in others]),
        "rfad10": score("rfad", named[1]),
        "rfad10_mse": [score("rfad", f"ipc{ipcs[1]}-rf-mse-{labels}").mean for labels in ("learn", "fixed")],
        "dc1_mse": span([score("dc", s).mean for s in settings[ipcs[0]] if "-mse-" in s]),
        "dc1": score("dc", named[0]), "dc1_below_random": below_random("dc", named[0]),
        "dc1_rf": score("dc", rf_platt), "dc1_rf_below_random": below_random("dc", rf_platt),
        "dc1_exact_platt": score("dc", f"ipc{ipcs[0]}-exact-platt-learn").mean,
        "dc10_mse": [score("dc", f"ipc{ipcs[1]}-rf-mse-{labels}").mean for labels in ("fixed", "learn")],
        "dc10_platt": score("dc", named[1]),
        # the random subsets beside the first table's sets (rf Platt's rows), and beside the one-hour sets
        "random": {p: [random_of(p, s) for s in (rf_platt, named[1])] for p in ("rfad", "dc")},
        "random1_finetuned": {p: random_of(p, named[0]) for p in ("rfad", "dc")},
        "published_rfad": [cells("rfad", s)[0]["published"][0]["accuracy"] for s in named],
    }


def finetuned_rfad_summary(r: Results) -> dict:
    """results/transfer_mnist_ipc1_finetuned_rfad: the one-hour KIP sets (one per distillation seed) under
    rfad: the networks at their best validation accuracy and at their last step, the sets' KRR, and the
    same-protocol random real subsets."""
    rows = r("transfer_mnist_ipc1_finetuned_rfad[rows]")
    if {x["protocol"] for x in rows} != {"rfad"} or len({x["distillation_seed"] for x in rows}) != len(rows):
        raise ValueError("transfer_mnist_ipc1_finetuned_rfad: expected one rfad row per distillation seed")
    random = rows[0]["random"]
    return {"seeds": len(rows), "set": mean_std([x["set"]["mean"] for x in rows]),
            "each": [x["set"]["mean"] for x in rows],
            "final": mean_std([mean(x["set"]["final_test_accuracies"]) for x in rows]),
            "krr": mean_std([x["krr"] for x in rows]), "random": MeanStd(random["mean"], random["std"]),
            "published": rows[0]["published"][0]["accuracy"]}


def matching_summary(r: Results) -> dict:
    """results/matching_mnist: per method, mean ± std over distillation seeds of the sets' mean
    accuracy; the span of the methods' mean distillation minutes; the random real subsets'."""
    rows = r("matching_mnist[rows]")
    kip = next(x["method"] for x in rows if x["method"].startswith("KIP"))

    def sets(method: str, protocol: str | None = None, ipc: int = 1) -> list[dict]:
        return [x for x in rows if x["method"] == method and protocol in (None, x["protocol"]) and x["ipc"] == ipc]
    methods = ("DC", "DSA", "DM")
    return {
        "seeds": len(sets("DC")), **{m: mean_std([x["set"]["mean"] for x in sets(m)]) for m in methods},
        "minutes": span([minutes(mean([x["seconds"] for x in sets(m)])) for m in methods]),
        "random": [MeanStd(sets(m)[0]["random"]["mean"], sets(m)[0]["random"]["std"]) for m in ("DC", "DSA")],
        "kip_seeds": len(sets(kip, "dc")), "kip": [mean_std([x["set"]["mean"] for x in sets(kip, p)]) for p in ("dc", "dsa")],
        # 10 per class: one distillation seed, one network per set
        "seeds10": len(sets("DC", ipc=10)), "set10": [sets(m, ipc=10)[0]["set"]["mean"] for m in methods],
        "random10": [MeanStd(sets(m, ipc=10)[0]["random"]["mean"], sets(m, ipc=10)[0]["random"]["std"]) for m in ("DC", "DSA")],
        "networks10": sets("DC", ipc=10)[0]["card"]["networks"], "sizes": sorted({x["ipc"] for x in rows}),
    }


def over_seeds(row: dict, cell: str, key: str) -> MeanStd:
    """A results row's `key` over its seeds' cells (`cell`0, `cell`1, ...: kip_fc's rows)."""
    return mean_std([row[f"{cell}{seed}"][key] for seed in range(len([k for k in row if re.fullmatch(cell + r"\d+", k)]))])


def unroll_totals(r: Results) -> dict:
    """results/unroll_memory: per method, the compiled step's temporaries + inputs + outputs (GB),
    with and without rematerialisation."""
    return {m: [sum(r(f"unroll_memory[rows][method={m},remat={remat}]")[k] for k in ("temp_gb", "inputs_gb", "outputs_gb"))
                for remat in (True, False)] for m in ("dd", "mtt")}


@dataclass(frozen=True)
class Row:
    """A line of the table (see the module's docstring); `values`: the figures its templates compute, by name."""
    what: str
    ours: str
    reference: str
    files: tuple[str, ...]
    values: dict[str, Callable[[Results], Any]] = field(default_factory=dict)


KERNEL_SPEED_GOAL = 10  # x neural-tangents' speed per ConvNet kernel entry (the row's reference says so)
CONVNETS = ("convnet3", "convnet")
BUDGET = (10, 100, 1000)  # the stored examples the data-budget row shows
SIXTY = ("kip_convnet_mnist_60min_rf", "kip_convnet_mnist_60min_finetune")  # the two stages of the one-hour run
ROWS = [
    Row("KIP-FC, MNIST, 1 / 10 / 50 images per class (KRR test acc.)",
        "FC3: {kip_fc_mnist_fc3[rows][*][kip][test_accuracy]:.2p}; FC1: {kip_fc_mnist[rows][*][kip0][test_accuracy]:.2p}",
        "published {kip_fc_mnist_fc3[rows][*][published]:.1f}", ("kip_fc_mnist_fc3", "kip_fc_mnist")),
    Row("KIP-FC1, MNIST, 1 / 10 / 50 images per class, 3 distillation seeds (KRR test acc., mean ± std)",
        "{kip:.2p} ({kip_fc_mnist_3seeds[rows][*][kip0][steps]} steps)",
        "published {kip_fc_mnist_3seeds[rows][*][published]:.1f}", ("kip_fc_mnist_3seeds",),
        {"kip": lambda r: [over_seeds(row, "kip", "test_accuracy") for row in r("kip_fc_mnist_3seeds[rows]")]}),
    Row("KIP-FC1, CIFAR-10 (JPEG copy), 10 per class",
        "{kip_fc_cifar10_jpeg_lossy[rows][0][kip0][test_accuracy]:.2p} "
        "({kip_fc_cifar10_jpeg_lossy[rows][0][kip0][steps]} steps)",
        "published {kip_fc_cifar10_jpeg_lossy[rows][0][published]:.1f} (original CIFAR-10)",
        ("kip_fc_cifar10_jpeg_lossy",)),
    Row("KIP step, FC1, MNIST, target batch 5000, 10 / 100 support, incl. batch sampling",
        "float64 {speedup[float64][0]:.1f}x / {speedup[float64][1]:.1f}x, "
        "float32 {speedup[float32][0]:.1f}x / {speedup[float32][1]:.1f}x faster",
        "neural-tangents {kip_step[reference][0][version]}", ("kip_step",),
        {"speedup": lambda r: {dtype: [r(f"kip_step[reference][support={s}][with_sampling_ms_median]")
                                       / r(f"kip_step[ours][support={s},dtype={dtype}][step_ms_median]")
                                       for s in r("kip_step[args][support]")] for dtype in ("float64", "float32")}}),
    Row("ConvNet3 / ConvNet NTK per entry, forward / fwd+grad (value and gradient); float64 and float32, "
        "28x28x1 and 32x32x3",
        "ConvNet3 {ks[convnet3][forward]:.1f}x / {ks[convnet3][forward_grad]:.1f}x, ConvNet "
        "{ks[convnet][forward]:.1f}x / {ks[convnet][forward_grad]:.1f}x faster, {ks[memory]:.0f}x less memory "
        "(goal met by {ks[met]} of {ks[speedups]} speed-ups)",
        f"neural-tangents 0.6.5; goal {KERNEL_SPEED_GOAL}x", ("kernel_speed",), {"ks": kernel_speed_summary}),
    Row("KIP step, exact ConvNet3 vs `rf-convnet3` (4 x 128)",
        "against the banded exact NTK, float64 / float32: {rf[big][float64]:.0f}x / {rf[big][float32]:.0f}x at "
        "support {rf[big][support]} x target batch {rf[big][target_batch]}, {rf[mid][float64]:.0f}x / "
        "{rf[mid][float32]:.0f}x at {rf[mid][support]} x {rf[mid][target_batch]} ({rf[narrow_s]:.2f} s per step; "
        "{rf[wide_label]}: {rf[wide][float64]:.0f}x / {rf[wide][float32]:.0f}x). Accuracy after {rf[steps]} steps, "
        "MNIST, {rf[seeds]} seeds: within a point of KIP with the exact NNGP, the kernel random features estimate "
        "({rf[mse][wide]:+.2p} for {rf[wide_label]}, {rf[mse][narrow]:+.2p} for {rf[narrow_label]}), and "
        "{rf[mse][below_ntk]:.1p} points below KIP with the exact NTK (the exact NNGP itself: {rf[mse][nngp]:+.2p}); "
        "the same with RFAD's recipe (Platt loss, learned labels): exact NTK {rf[platt][ntk]:.2p}, random features "
        "{rf[platt][wide]:+.2p} / {rf[platt][narrow]:+.2p} from the exact NNGP, which is {rf[platt][nngp_below]:.2p} "
        "below the NTK; random features of the *NTK* (the networks' per-example parameter gradients, a probe outside "
        "the library) come within {rf[entk][ntk]:+.2p} of it, at {rf[entk][s]:.2f} s per step, "
        "{rf[entk][times_exact]:.1f}x the exact kernel's at this size (speed goal met at support {rf[big][support]} x "
        "{rf[big][target_batch]} against the float64 NTK only; accuracy goal met against the exact NNGP at support "
        "{rf[support]} x {rf[target_batch]}, not against the NTK)",
        "RFAD: 100-190x on GPU; goal 100x within 1 point", ("rf_speed", "rf_speed_tb500", "rf_speed_platt", "entk_probe"),
        {"rf": rf_speed_summary}),
    Row("GraNd per-example gradients, vmap(grad) vs jax.jacrev, ConvNet / ResNet-18",
        "{speedup[0]:.1f}x / {speedup[1]:.1f}x", "the Data Diet code's way", ("grand_speed",),
        {"speedup": lambda r: [x["grand"]["examples_per_s"] / x["jacrev"]["examples_per_s"]
                               for x in r("grand_speed[rows]")]}),
    Row("KIP with `rf-convnet3` (4 x 128), MNIST, 1 / 10 per class (KRR, 8 x 256 estimate)",
        "MSE loss: {kip_convnet_mnist[rows][*][evals][rf][test_accuracy]:.2p} "
        "({kip_convnet_mnist[rows][*][kip][steps]} steps, {minutes:.0f} min on CPU); {kip_convnet_mnist[rows][0][ipc]} "
        "per class under the exact ConvNet3 NTK: {kip_convnet_mnist[rows][0][evals][exact][test_accuracy]:.2p}. Platt "
        "loss, {kip_convnet_mnist_platt[rows][*][ipc]} per class, {kip_convnet_mnist_platt[rows][*][kip][steps]} steps: "
        "{kip_convnet_mnist_platt[rows][*][evals][rf][test_accuracy]:.2p} (under the exact NTK: "
        "{kip_convnet_mnist_platt[rows][0][evals][exact][test_accuracy]:.2p} at "
        "{kip_convnet_mnist_platt[rows][0][ipc]} per class)",
        "published KIP-ConvNet 96.5 / 99.1 (exact kernel, to convergence)",
        ("kip_convnet_mnist", "kip_convnet_mnist_platt"),
        {"minutes": lambda r: [minutes(s) for s in r("kip_convnet_mnist[rows][*][kip][seconds]")]}),
    Row("KIP with `rf-convnet3` (4 x 128), MSE loss, MNIST, 1 per class, 3 distillation seeds (KRR, mean ± std; "
        "rf: the 8 x 256 estimate)",
        "{seeds[rf]:.2p} (rf), {seeds[exact]:.2p} under the exact ConvNet3 NTK "
        "({kip_convnet_mnist_ipc1_3seeds[rows][0][seeds][*][kip][steps]} steps, {seeds[minutes]:.0f} min a seed on "
        "average on CPU); their real starts {seeds[start_rf]:.2p} / {seeds[start_exact]:.2p}",
        "published KIP-ConvNet 96.5 (exact kernel, to convergence)", ("kip_convnet_mnist_ipc1_3seeds",),
        {"seeds": lambda r: {
            **{k: mean_std(r(f"kip_convnet_mnist_ipc1_3seeds[rows][0][seeds][*][evals][{k}][test_accuracy]"))
               for k in ("rf", "exact")},
            **{f"start_{k}": mean_std(r(f"kip_convnet_mnist_ipc1_3seeds[rows][0][seeds][*][real_images][{k}][test_accuracy]"))
               for k in ("rf", "exact")},
            "minutes": mean([minutes(s) for s in r("kip_convnet_mnist_ipc1_3seeds[rows][0][seeds][*][kip][seconds]")])}}),
    Row("KIP-ConvNet3, MNIST, 1 per class, in about an hour on CPU: `rf-convnet3` Platt KIP (1000 steps) then 500 "
        "exact-NTK fine-tuning steps (`--init-from`, target batch 50); 5000 training images held out of both stages' "
        "targets, on which the fine-tune's Adam lr is chosen from 0.003 / 0.01 / 0.03",
        "**{tuned[kip][test_accuracy]:.2p}** under the exact ConvNet3 NTK ({tuned[kip][initial_test_accuracy]:.2p} "
        "before fine-tuning), lr {kip_convnet_mnist_60min_finetune[rows][0][lr]:g}; {minutes[0]:.1f} + {minutes[1]:.1f} = "
        "{total:.1f} min of training",
        "published KIP-ConvNet 96.5", SIXTY,
        {"tuned": lambda r: r("kip_convnet_mnist_60min_finetune[rows][0][seeds][0]"),
         "minutes": lambda r: [minutes(r(f"{n}[rows][0][seeds][0][kip][seconds]")) for n in SIXTY],
         "total": lambda r: sum(minutes(r(f"{n}[rows][0][seeds][0][kip][seconds]")) for n in SIXTY)}),
    Row("KIP with the exact ConvNet3 NTK, MNIST, 1 per class, target batch 20, float32",
        "{kip_convnet_mnist_exact[rows][0][kip][test_accuracy]:.2p} ({kip_convnet_mnist_exact[rows][0][kip][steps]} "
        "steps, {kip_convnet_mnist_exact[rows][0][kip][seconds_per_step]:.2f} s/step, "
        "{kip_convnet_mnist_exact[rows][0][kip][seconds]:.0f} s of training on CPU with the banded kernel)",
        "published KIP-ConvNet 96.5", ("kip_convnet_mnist_exact",)),
    Row("KIP-ConvNet3 sets → finite ConvNet3 under named protocols (width 128 on CPU), MNIST, 1 / 10 per class",
        "`rfad` (matched), setting chosen on validation: {t[ipc][0]} per class, the one-hour sets (rf Platt, then "
        "exact-NTK fine-tuning; {t[seeds][0]} distillation seeds) **{t[rfad1]:.1p}** (rf Platt alone, {t[rfad1_rf_seeds]} "
        "seeds: {t[rfad1_rf]:.1p}; the other {t[others]} settings, {t[one_seed]} seed: {t[rfad1_others]:.1p}); "
        "{t[ipc][1]} per class, rf Platt learned labels ({t[seeds][1]} seeds) **{t[rfad10]:.1p}** (rf MSE learned / "
        "fixed, {t[one_seed]} seed: {t[rfad10_mse]:.1p}; the exact-kernel settings not yet distilled at {t[ipc][1]}). "
        "`dc` (hard labels, DC augmentation): {t[ipc][0]} per class the one-hour sets {t[dc1]:.1p} (below random in "
        "{t[dc1_below_random]} of {t[seeds][0]}), rf Platt {t[dc1_rf]:.1p} (below random in {t[dc1_rf_below_random]}), "
        "exact Platt {t[dc1_exact_platt]:.1p}, MSE sets {t[dc1_mse]:.1p}; {t[ipc][1]} per class {t[dc10_mse]:.1p} (MSE "
        "fixed / learned), Platt {t[dc10_platt]:.1p}",
        "same-protocol random real: `rfad` {t[random][rfad]:.1p} (beside the one-hour sets {t[random1_finetuned][rfad]:.1p}); "
        "`dc` {t[random][dc]:.1p} (beside the one-hour sets {t[random1_finetuned][dc]:.1p}). Goals ≥ 88 / ≥ 96. "
        "Published (width 1024): RFAD {t[published_rfad]:.1f}, KIP-ConvNet 90.1 / 97.5", ("transfer_mnist",),
        {"t": transfer_summary}),
    Row("The one-hour KIP-ConvNet3 sets (above) → finite ConvNet3 under `rfad` (matched, width 128 on CPU, 1 network "
        "a set, early stopping on held-out training images), MNIST, 1 per class",
        "**{f[set]:.1p}** over {f[seeds]} distillation seeds ({f[each]:.1p}; their last steps {f[final]:.1p}); the "
        "sets' KRR under the exact ConvNet3 NTK {f[krr]:.2p}",
        "same-protocol random real {f[random]:.1p}; goal ≥ 88; published RFAD {f[published]:.1f} (width 1024)",
        ("transfer_mnist_ipc1_finetuned_rfad",), {"f": finetuned_rfad_summary}),
    Row(f"How much data is enough: MNIST, FC1 KRR at {' / '.join(map(str, BUDGET))} stored examples",
        "KIP {b[KIP]:.1p}; Label Solve {b[Label Solve]:.1p}; random {b[random]:.1p}; EL2N-hardest {b[EL2N]:.1p}",
        "no published comparison", ("data_budget_mnist",),
        {"b": lambda r: {m: [mean(r(f"data_budget_mnist[results][method={m},n={n}][kernel]")) for n in BUDGET]
                         for m in ("KIP", "Label Solve", "random", "EL2N")}}),
    Row("Data Diet, MNIST 10k subset, EL2N keeping 50%", "{el2n:.2p} vs full data {full:.2p}",
        "published (CIFAR-10): 95.2 vs 95.5", ("data_diet_mnist",),
        {"el2n": lambda r: mean(r("data_diet_mnist[grid][method=el2n,keep=0.5][accuracies]")),
         "full": lambda r: mean(r("data_diet_mnist[full]"))}),
    Row("Random real subsets under `dc` (DC ConvNet width 128, DC augmentation, 1001 epochs), MNIST, 1 / 10 per class",
        "**{random:.1p}** ({protocol_baselines_mnist[rows][*][random][subsets]} subsets)",
        "published (DC Table 1) {published:.1f}", ("protocol_baselines_mnist",),
        {"random": lambda r: [MeanStd(x["mean"], x["std"]) for x in r("protocol_baselines_mnist[rows][*][random]")],
         "published": lambda r: [MeanStd(p["accuracy"], p["std"]) for p in
                                 r("protocol_baselines_mnist[rows][*][published][method=random real]")]}),
    Row("DC / DSA / DM, MNIST, 1 / 10 per class, under their papers' protocols (`dc` for DC, `dsa` for DSA and DM; "
        "width-128 ConvNet), CPU settings (matching network width 64, 64 real images per class; 1 per class: "
        "500 / 500 / 1500 iterations, 2 networks per set; 10 per class: 40 / 40 / 3000 iterations, DC / DSA loops "
        "10 / 10, 1 network per set)",
        "{m[sizes][0]} per class, {m[seeds]} distillation seeds: DC **{m[DC]:.1p}**, DSA **{m[DSA]:.1p}**, DM **{m[DM]:.1p}** "
        "({m[minutes]:.0f} min per run here); same-protocol random real {m[random][0]:.1p} (`dc`) / "
        "{m[random][1]:.1p} (`dsa`); KIP rf-Platt sets ({m[kip_seeds]} seeds, hard labels) {m[kip]:.1p}. "
        "{m[sizes][1]} per class, {m[seeds10]} seed, {m[networks10]} network: DC / DSA / DM {m[set10]:.1p}; random real "
        "{m[random10][0]:.1p} (`dc`) / {m[random10][1]:.1p} (`dsa`)",
        "published 1 / 10 per class: DC 91.7 / 97.4, DSA 88.7 / 97.8, DM 89.7 / 97.5; random real 64.9 / 95.1 "
        "(DC Table 1)", ("matching_mnist",),
        {"m": matching_summary}),
    Row("DC / DM outer iteration, 10 classes batched in one jitted step vs a per-class loop (a direct port), "
        "width 64, 64 real/class",
        "DC {distill_speed[rows][method=dc][speedup]:.2f}x, DM {distill_speed[rows][method=dm][speedup]:.2f}x "
        "(goal not met: compute-bound on CPU); kip's batched DC with XLA's convolutions: "
        "{distill_speed[rows][method=dc][seconds_batched_lax]:.0f} s per iteration (im2col: "
        "{distill_speed[rows][method=dc][seconds_batched]:.2f} s)",
        "the PyTorch code's per-class loop; goal 2x", ("distill_speed",)),
    Row("DD / MTT step, 50 unrolled steps, width-128 ConvNet, 10 synthetic images, DD with 64 real images per class "
        "in blocks of 128 (XLA's memory accounting of the compiled step)",
        "each step rematerialised (kip): DD {gb[dd][0]:.2f} GB (temporaries "
        "{unroll_memory[rows][method=dd,remat=True][temp_gb]:.2f}), MTT {gb[mtt][0]:.2f} GB; without "
        "rematerialisation {gb[dd][1]:.2f} / {gb[mtt][1]:.2f} GB",
        "goal < 2 GB: met", ("unroll_memory",), {"gb": unroll_totals}),
    Row("`fit_many`: 8 DC networks vmapped into one call vs one call each (CPU)",
        "{ensemble_speed[rows][0][speedup]:.2f}x at {ensemble_speed[rows][0][images]} and "
        "{ensemble_speed[rows][1][speedup]:.2f}x at {ensemble_speed[rows][1][images]} images (XLA:CPU batched "
        "convolutions; so CPU runs them one by one)",
        "goal 2x", ("ensemble_speed",)),
]


def render_row(row: Row, results: Results) -> str:
    """One markdown line; a row that reads a results file it does not link, or links a missing one, is an error."""
    results.read.clear()
    formatter = ResultsFormatter(results, row.values)
    ours, reference = formatter.format(row.ours), formatter.format(row.reference)
    if not results.read <= set(row.files):
        raise ValueError(f"row {row.what!r} reads {sorted(results.read - set(row.files))} but does not link them")
    for name in row.files:
        if not os.path.exists(os.path.join(results.directory, f"{name}.md")):
            raise FileNotFoundError(f"row {row.what!r} links results/{name}.md, which does not exist")
    links = ", ".join(f"[{name}](results/{name}.md)" for name in row.files)
    return f"| {row.what} | {ours} | {reference} | {links} |"


def table(results_dir: str) -> str:
    """The README's results table (markdown, no trailing newline) from the files in `results_dir`."""
    results = Results(results_dir)
    return "\n".join(HEADER + [render_row(row, results) for row in ROWS])


def readme_table(text: str) -> str:
    """The lines between the README's two marker lines."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs one {START} line and, after it, one {END} line")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def first_difference(current: str, generated: str) -> str | None:
    """A one-line account of the first line where the README's table differs from the generated one, or None."""
    old, new = current.splitlines(), generated.splitlines()
    for i in range(max(len(old), len(new))):
        if i >= len(old) or i >= len(new) or old[i] != new[i]:
            what = (new[i] if i < len(new) else old[i]).split(" | ")[0].lstrip("| ")
            return f"line {i + 1} of the results table ({what!r}) is not what results/*.json give"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not the generated one")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    parser.add_argument("--results-dir", default=os.path.join(ROOT, "results"))
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    current, generated = readme_table(text), table(args.results_dir)
    if args.check:
        difference = first_difference(current, generated)
        if difference:
            print(f"{args.readme}: {difference}; run python tools/readme_results.py", file=sys.stderr)
        return 1 if difference else 0
    if current != generated:
        head, rest = text.split(START, 1)
        with open(args.readme, "w") as f:
            f.write(f"{head}{START}\n{generated}\n{END}{rest.split(END, 1)[1]}")
        print(f"rewrote the results table of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
