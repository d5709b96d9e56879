"""Every script in experiments/ in its quickest setting (--quick: the embedded digits, small
sizes), as CI runs them so none of them rots: it runs to the end, writes its table and plots,
and the numbers in the table are real accuracies (above chance)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from kip import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# script, extra flags, results file, a line of the table that must be there
QUICK = [
    # two distillation seeds (1 and 2: --first-seed) pooled: mean ± std for KIP, the real starts, Label Solve and the uniform subsets
    ("kip_fc.py", ["--first-seed", "1"], "kip_fc_digits_quick.md",
     r"\| fc1 \| 10 \| - \| \*\*\d+\.\d\d ± \d+\.\d\d\*\* \| 2 \| 200 \| \d+ \| \d+\.\d\d ± \d+\.\d\d \| \d+\.\d\d ± \d+\.\d\d \| \d+\.\d\d ± "),
    # transfer.py: its own test below (its quick run, then again with --merge)
    ("protocol_baselines.py", ["--no-progress"], "protocol_baselines_digits_quick.md", r"\| dc \| 5 \| "),
    ("data_diet.py", ["--no-progress"], "data_diet_digits_quick.md", r"\| 50% \("),
    ("data_budget.py", ["--no-progress"], "data_budget_digits_quick.md", r"\| 200 \| - \| \d+\.\d+ \| "),  # KIP up to 10
    # two lrs x two seeds (1 and 2: --first-seed), the lr chosen by its seeds' mean accuracy on held-out training images
    ("kip_convnet.py", ["--lr", "0.01", "0.04", "--val-size", "200", "--seeds", "2", "--first-seed", "1"], "kip_convnet_digits_quick.md",
     r"\| 10 \| - \| \*\*\d+\.\d\d ± \d+\.\d\d\*\* \(\d+\.\d\d ± \d+\.\d\d\) \| \d+\.\d\d ± \d+\.\d\d \| 2 \| 30 \| 200 \| .* \| "
     r"(\*\*0\.01: \d+\.\d+\*\*, 0\.04: \d+\.\d+|0\.01: \d+\.\d+, \*\*0\.04: \d+\.\d+\*\*) \| \d+\.\d+ \(\d+\): \d+\.\d+; \d+\.\d+ \(\d+\): "),
    # one method: DC's and DM's paths are the library's (tests/test_matching.py); this checks the script
    ("matching.py", ["--no-progress", "--methods", "dsa"], "matching_digits_quick.md", r"\| DSA \| 1 \| 1 \| 6 it\., width 8"),
    # method_zoo.py: its own test below (its quick run, then again from its kept cells alone)
    # slow (~50 s and ~220 s on a loaded 2-core machine): exact KIP in kip_convnet is also run by the fine-tuning test below
    pytest.param("kip_convnet.py", ["--kernel", "convnet3", "--ipc", "1", "--eval", "exact", "rf"], "kip_convnet_digits_quick.md",
                 r"\| 1 \| - \| \*\*\d+\.\d+\*\* \(\d+\.\d+\) \| \*\*\d+\.\d+\*\* .* \| 30 \| 200 \| ",  # exact KIP: both evaluations, --quick's 30 steps
                 marks=pytest.mark.slow, id="kip_convnet.py-convnet3"),
    pytest.param("neurips2021_table1.py", ["--no-progress"], "neurips2021_table1_digits_quick.md", r"\| digits \| 5 \| ",
                 marks=pytest.mark.slow, id="neurips2021_table1.py"),
]


@pytest.mark.parametrize("script, flags, result, row", QUICK, ids=[q[0] if isinstance(q[0], str) else None
                                                                 for q in QUICK])
def test_quick_mode_runs_and_writes_its_table(tmp_path, script, flags, result, row):
    results = tmp_path / "results"
    cmd = [sys.executable, os.path.join(ROOT, "experiments", script), "--quick", "--results-dir", str(results),
           "--runs-dir", str(tmp_path / "runs"), "--allow-dirty", *(f.format(tmp=tmp_path) for f in flags)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (results / result).read_text()
    assert text.startswith("# ") and "Command: `python" in text and "Machine:" in text
    assert f"commit {report.provenance(allow_dirty=True)['stamp']};" in text  # taken at the start, the tree unchanged since
    line = next((ln for ln in text.splitlines() if re.match(row, ln)), None)
    assert line is not None, text
    accuracies = [float(v) for v in re.findall(r"\b(\d{1,3}\.\d{1,2})\b", line.split("|", 3)[-1])]
    assert accuracies and max(accuracies) > 20.0, line  # digits: chance is 10%
    assert (results / result.replace(".md", ".json")).exists()
    if "--first-seed" in flags:  # the runs are those seeds', and the text says which
        assert {re.search(r"-seed(\d+)", d).group(1) for d in os.listdir(tmp_path / "runs")} == {"1", "2"}
        assert "(here seeds 1, 2)" in text


@pytest.mark.parametrize("flags, message", [
    ([], "takes days per cell on a CPU"),
    (["--gpu", "--datasets", "imagenet"], "--datasets: ['imagenet'] not in the table"),
])
def test_neurips_table1_refuses_what_it_cannot_run_in_one_line(tmp_path, flags, message):
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "neurips2021_table1.py"), "--runs-dir", str(tmp_path / "runs"),
           "--results-dir", str(tmp_path), "--allow-dirty", *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.glob("*.md")) and not (tmp_path / "runs").exists()


@pytest.mark.slow  # ~30 s: --init-from is tested by test_cli, exact ConvNet3 KIP by test_distill, the script by its quick run
def test_kip_convnet_fine_tunes_a_distilled_set_under_the_exact_kernel(tmp_path):
    """--init-from: the exact-kernel run starts from another run's set, and the table's bracketed
    figure is that set's own accuracy under the exact kernel (what `kip evaluate` says of it)."""
    from kip import cli

    start = tmp_path / "start"
    assert cli.main(["distill", "--steps", "0", "--ipc", "1", "--out", str(start), "--no-progress"]) == 0
    assert cli.main(["evaluate", "--distilled", str(start / "distilled.npz"), "--kernel", "convnet3",
                     "--out", str(tmp_path / "start.json")]) == 0
    before = json.loads((tmp_path / "start.json").read_text())["test_accuracy"]
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "kip_convnet.py"), "--quick", "--kernel", "convnet3",
           "--ipc", "1", "--eval", "exact", "--init-from", str(start), "--lr", "0.01", "--results-dir", str(tmp_path),
           "--runs-dir", str(tmp_path / "runs"), "--allow-dirty"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "kip_convnet_digits_quick.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| 1 |"))
    assert f"({100 * before:.2f})" in row and "fine-tuning" in text and "Adam 0.01" in text, text
    assert os.listdir(tmp_path / "runs") == ["digits-convnet3-float64-tb200-mse-ipc1-from-start-lr0.01-seed0"]


def test_method_zoo_quick_then_again_from_its_kept_cells_alone(tmp_path):
    """The zoo's quick run (experts recorded, budgets read from snapshots, each reading judged by
    the protocol and KRR, FRePo's final set by its own protocol), then, as on a new machine
    without the run folders, again from its kept cells (sets, options, judgements, the experts'
    record): the same rows, nothing distilled, recorded or trained."""
    import shutil

    cmd = [sys.executable, os.path.join(ROOT, "experiments", "method_zoo.py"), "--quick", "--no-progress",
           "--methods", "mtt", "frepo", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
           "--cells-dir", str(tmp_path / "cells"), "--allow-dirty"]
    run = lambda: subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                 env={**os.environ, "PYTHONPATH": ROOT})
    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    text = (tmp_path / "results" / "method_zoo_digits_quick.md").read_text()
    row = next((ln for ln in text.splitlines() if re.match(r"\| FRePo \| 1 \| 0\.15 \| 1 \| .* \| frepo: \d+\.\d \(\d+\.\d\) \|", ln)), None)
    assert row is not None, text
    assert max(float(v) for v in re.findall(r"\b(\d{1,3}\.\d)\b", row.split("|", 5)[-1])) > 20.0, row  # chance: 10%
    rows = json.loads((tmp_path / "results" / "method_zoo_digits_quick.json").read_text())["rows"]
    # MTT's final set also under its own evaluation: the zoo's protocol at the lr MTT learned with it
    mtt = [r for r in rows if r["method"] == "mtt" and "own" in r]
    assert mtt and all(r["own"]["protocol"] == "dsa" and r["own"]["overrides"]["lr"] == r["own"]["learned_lr"] > 0
                       for r in mtt), mtt
    assert re.search(r"\| MTT \| 1 \| 0\.15 \| 1 \| .* \| dsa at lr \d", text), text
    assert "method_zoo_digits_quick_sets.png" in text and (tmp_path / "results" / "method_zoo_digits_quick_sets.png").exists()
    assert {"cell.json", "judged.json", "metrics.json", "snapshots"} <= set(os.listdir(tmp_path / "cells" / "frepo-ipc1-seed0"))
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "results")
    second = run()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already done" in second.stdout and "experts" not in " ".join(os.listdir(tmp_path))
    assert not (tmp_path / "runs").exists()  # nothing distilled, recorded or trained
    again = json.loads((tmp_path / "results" / "method_zoo_digits_quick.json").read_text())["rows"]
    assert [(r["set"], r["krr"], r.get("own")) for r in again] == [(r["set"], r["krr"], r.get("own")) for r in rows]
    # each reading names the code that judged it (the first run's, read back from judged.json)
    assert all(r["judged_by"] and r["judged_by"] == r["cell"]["code"]["stamp"] for r in again), again
    assert f"judged at {again[0]['judged_by']} (each cell" in (tmp_path / "results" / "method_zoo_digits_quick.md").read_text()
    # --kept-only: a method (2 seeds) and a seed of two others never kept: named and left out, nothing runs
    cmd += ["--kept-only", "--seeds", "2", "--methods", "dd", "mtt", "frepo"]
    third = run()
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("not kept: left out") == 4 and not (tmp_path / "runs").exists()
    kept = json.loads((tmp_path / "results" / "method_zoo_digits_quick.json").read_text())["rows"]
    assert [(r["method"], r["seed"], r["set"]) for r in kept] == [(r["method"], r["seed"], r["set"]) for r in rows]
    # --first-seed 1: seed 1's cells alone (none kept: each named, seed 0's rows not read)
    alone = subprocess.run([*cmd[:-7], "--kept-only", "--seeds", "1", "--first-seed", "1", "--methods", "mtt", "frepo"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
    assert alone.returncode != 0 and alone.stdout.count("not kept: left out") == 2 and "seed 0" not in alone.stdout, alone.stdout
    # a kept cell not judged yet: named and left out, no network trained
    os.remove(tmp_path / "cells" / "frepo-ipc1-seed0" / "judged.json")
    networks = sorted(os.listdir(tmp_path / "networks"))
    fifth = run()
    assert fifth.returncode == 0 and "not judged yet, left out (--kept-only)" in fifth.stdout, fifth.stderr[-3000:]
    kept = json.loads((tmp_path / "results" / "method_zoo_digits_quick.json").read_text())["rows"]
    assert [r["method"] for r in kept] == [r["method"] for r in rows if r["method"] != "frepo"]
    assert sorted(os.listdir(tmp_path / "networks")) == networks and not (tmp_path / "runs").exists()
    # another --runs-dir gives MTT another expert_dir: its kept cell is named and nothing runs
    cmd = cmd[: cmd.index("--kept-only")]
    cmd[cmd.index("--runs-dir") + 1] = str(tmp_path / "other_runs")
    fourth = run()
    assert fourth.returncode != 0 and "mtt-ipc1-seed0 holds a finished run of other options (expert_dir" in fourth.stderr, \
        fourth.stderr[-3000:]
    assert len(fourth.stderr.strip().splitlines()) == 1 and not (tmp_path / "other_runs").exists()


def test_method_zoo_names_every_cifar10_gpu_cell_and_refuses_another_quick_dataset(tmp_path):
    """--gpu --dataset: the configuration of every method's CIFAR-10 cell builds (--kept-only with
    no kept cells names each one and runs none); --quick takes only the embedded digits."""
    base = [sys.executable, os.path.join(ROOT, "experiments", "method_zoo.py"), "--no-progress", "--allow-dirty",
            "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--cells-dir", str(tmp_path / "cells")]
    run = lambda *flags: subprocess.run([*base, *flags], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                        env={**os.environ, "PYTHONPATH": ROOT})
    gpu = run("--gpu", "--dataset", "cifar10_jpeg_lossy", "--kept-only")
    assert gpu.returncode != 0 and "nothing to report" in gpu.stderr, gpu.stderr[-3000:]
    assert gpu.stdout.count("not kept: left out") == 11 * (3 + 3), gpu.stdout  # 11 rows, 3 seeds at 1 and at 10
    assert "== MTT, 10/class, seed 2" in gpu.stdout and not (tmp_path / "runs").exists()
    quick = run("--quick", "--dataset", "mnist")
    assert quick.returncode != 0 and "--quick runs the embedded digits" in quick.stderr, quick.stderr


def test_method_zoo_on_cpu_judges_own_protocols_at_10_per_class_for_frepo_rows_and_mtt_only():
    """At 1 per class every method with an own protocol gets it; at 10 (CPU) only FRePo (both
    rows) and MTT, and the table's words say so."""
    code = ("import method_zoo as z; m = z.MODES['cpu']; "
            "print([(k, i) for k in z.ALL for i in (1, 10) if z.owned(m, k, i)]); print(z.own_words(m)); "
            "c = z.config_for('frepo-lr', *m['methods']['frepo-lr'], m, None, 1, 0, 60.0, 'x'); print(c.method, c.lr, c.width); "
            "c = z.config_for('frepo-net', *m['methods']['frepo-net'], m, None, 1, 0, 60.0, 'x'); print(c.method, c.pool_net, c.width)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "experiments")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    owned, words, variant, own_net = proc.stdout.strip().splitlines()
    assert variant == "frepo 0.003 64"  # the validated-lr row runs FRePo itself, at the zoo's width
    assert own_net == "frepo frepo 32"  # FRePo's own network, narrower on CPU
    assert owned == str([("kip-rf", 1), ("kip-exact", 1), ("label-solve", 1), ("mtt", 1), ("mtt", 10),
                         ("frepo", 1), ("frepo", 10), ("frepo-lr", 1), ("frepo-lr", 10), ("frepo-net", 1), ("frepo-net", 10)])
    assert words.endswith("; at 10 per class: frepo, frepo-lr, frepo-net, mtt only"), words


def test_kip_convnet_refuses_to_choose_an_lr_without_a_validation_split(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "kip_convnet.py"), "--quick", "--lr", "0.01", "0.04",
           "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path), "--allow-dirty"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and "several --lr values need --val-size" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("*.md"))


def test_transfer_quick_then_merge_keeps_earlier_rows_beside_new_ones_and_marks_the_best_on_validation(tmp_path):
    """transfer.py's quick run (both protocols: a real table), then `--merge`: an earlier table's rows
    (here the quick run's, renamed as if other sets) join the sets judged now, each naming the commit
    that judged it; a set judged again replaces its merged row (its networks from the cache); the
    setting best on validation per size is marked; a file that is not a results file of this script
    is refused in one line before anything runs."""
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "transfer.py"), "--quick", "--no-progress",
           "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), "--allow-dirty"]
    run = lambda *extra: subprocess.run([*cmd, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                        env={**os.environ, "PYTHONPATH": ROOT})
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "results" / "transfer_digits_quick.md").read_text()
    assert text.startswith("# ") and f"commit {report.provenance(allow_dirty=True)['stamp']};" in text
    line = next((ln for ln in text.splitlines() if re.match(r"\| digits-fc1-ipc5 \| 5 \| 1 \| \d+\.\d \| dc", ln)), None)
    assert line is not None and max(float(v) for v in re.findall(r"\b(\d{1,3}\.\d)\b", line.split("|", 5)[-1])) > 20.0, text
    first = json.loads((tmp_path / "results" / "transfer_digits_quick.json").read_text())
    earlier = {**first, "provenance": {"stamp": "abc1234"}, "rows": [
        {**{k: v for k, v in r.items() if k != "judged_at"}, "setting": "earlier-" + r["setting"],
         "set": {**r["set"], "val_accuracies": [v + 0.5 for v in r["set"]["val_accuracies"]]}} for r in first["rows"]]}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    again = run("--merge", str(tmp_path / "earlier.json"), str(tmp_path / "results" / "transfer_digits_quick.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    merged = json.loads((tmp_path / "results" / "transfer_digits_quick.json").read_text())["rows"]
    # the quick sets are judged again (their merged rows replaced, not doubled), the renamed rows kept as they were
    assert sorted(r["setting"] for r in merged) == sorted([r["setting"] for r in first["rows"]] + [r["setting"] for r in earlier["rows"]])
    accuracies = lambda rows: [r["set"]["test_accuracies"] for r in rows]  # (dc's validation accuracies are NaN)
    assert accuracies(r for r in merged if r["setting"].startswith("earlier-")) == accuracies(earlier["rows"])
    assert accuracies(r for r in merged if not r["setting"].startswith("earlier-")) == accuracies(first["rows"])
    text = (tmp_path / "results" / "transfer_digits_quick.md").read_text()
    for ipc in (1, 5):  # the renamed rows' validation accuracies are 0.5 above: they are the best per size
        assert re.search(rf"\| earlier-digits-fc1-ipc{ipc} \(best on validation\) \| {ipc} \| .* \| abc1234 \|", text), text
        assert f"| digits-fc1-ipc{ipc} | {ipc} |" in text
    assert "Rows from " + str(tmp_path / "earlier.json") + " (4 rows; judged at abc1234" in text
    assert "4 of its rows judged again here" in text
    (tmp_path / "bad.json").write_text(json.dumps({"mode": "cpu", "rows": []}))
    bad = run("--merge", str(tmp_path / "bad.json"))
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        f"transfer.py: error: --merge {tmp_path / 'bad.json'}: not a quick-mode results file of transfer.py"], bad.stderr


def test_label_information_matches_the_run_s_own_evaluations_and_counts_labels(tmp_path):
    """label_information.py's quick run: its KRR of the set with its own labels and of the real images
    the set started from equal what the distilling run measured itself (metrics.json, another code
    path); the label statistics by hand on a small case."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "label_information.py"), "--quick", "--no-progress",
                           "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), "--allow-dirty"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "results" / "label_information_digits_quick.json").read_text())["rows"][0]
    metrics = json.loads((tmp_path / "runs" / "digits-fc1-ipc1-learn" / "metrics.json").read_text())
    assert row["own_labels"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert row["real_start"] == pytest.approx(metrics["initial_test_accuracy"], abs=1e-9)
    assert 0.1 < row["hard_labels"] <= 1 and row["labels"]["rows"] == 10
    # this set's every argmax is still its source's class: its hard labels are its sources' classes
    assert row["labels"]["argmax_is_source_class"] == 10 and row["source_labels"] == row["hard_labels"]
    # the label statistics, by hand from the set's file
    kept = np.load(tmp_path / "runs" / "digits-fc1-ipc1-learn" / "distilled.npz")
    from kip import data

    true, labels = data.load("digits").y_train[kept["initial_indices"]], kept["labels"]
    on_class = np.abs(labels[np.arange(10), true])
    assert row["labels"]["argmax_is_source_class"] == int(sum(np.argmax(labels[i]) == true[i] for i in range(10)))
    assert row["labels"]["classes_covered"] == len(set(np.argmax(labels, 1)))
    assert row["labels"]["max_abs_label"] == pytest.approx(float(np.abs(labels).max()))
    assert row["labels"]["off_class_mass"] == pytest.approx(float(np.mean(1 - on_class / np.abs(labels).sum(1))))
