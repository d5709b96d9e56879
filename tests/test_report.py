"""Provenance of results: the exact commit, and a tree with uncommitted code refused unless the
user allows it, in which case the diff's hash is recorded (kip.report.provenance)."""

import os
import subprocess
import sys

import pytest

from kip import InputError, report


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git checkout holding kip/, experiments/ and results/, one commit."""
    for path in ("kip/a.py", "experiments/e.py", "results/r.md", "notes.txt"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return tmp_path


def test_a_clean_tree_is_stamped_with_its_commit_and_results_are_not_code(repo):
    head = git(repo, "rev-parse", "--short", "HEAD")
    (repo / "results" / "r.md").write_text("a new table\n")  # output, not code
    (repo / "notes.txt").write_text("outside the code paths\n")
    assert report.provenance(root=str(repo)) == {"commit": head, "stamp": head}


@pytest.mark.parametrize("change", ["edit", "new file"])
def test_uncommitted_code_is_refused_unless_allowed_then_its_hash_is_recorded(repo, change):
    target = repo / ("kip/a.py" if change == "edit" else "experiments/new.py")
    target.write_text("x = 2\n")
    with pytest.raises(InputError, match="--allow-dirty") as refused:
        report.provenance(root=str(repo))
    assert os.path.relpath(target, repo) in str(refused.value) and "\n" not in str(refused.value)
    first = report.provenance(allow_dirty=True, root=str(repo))
    assert first["dirty"] == [os.path.relpath(target, repo)]
    assert "uncommitted" in first["stamp"] and first["diff_sha256"][:12] in first["stamp"]
    target.write_text("x = 3\n")  # another change: another hash
    assert report.provenance(allow_dirty=True, root=str(repo))["diff_sha256"] != first["diff_sha256"]


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path):
    assert report.provenance(root=str(tmp_path))["commit"] == "unknown"


def test_a_script_refuses_a_dirty_tree_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """The scripts' shared parser: exit 2, one line, nothing written."""
    monkeypatch.setattr(report, "provenance", lambda allow_dirty=False: (_ for _ in ()).throw(
        InputError("uncommitted changes in kip (kip/run.py): commit them first, or pass --allow-dirty")))
    monkeypatch.setattr(sys, "argv", ["transfer.py"])
    with pytest.raises(SystemExit) as exited:
        report.experiment_args("doc", "transfer", "gpu", "quick", ["--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1 and "--allow-dirty" in err
    assert not list(tmp_path.iterdir())


def test_percent_shows_a_spread_only_over_several_values():
    assert report.percent([0.5]) == "50.0"  # one seed: no "± 0.0" that reads as a measured spread
    assert report.percent([0.5, 0.7]) == "60.0 ± 14.1"  # sample std (ddof 1): 0.1 * sqrt(2)
