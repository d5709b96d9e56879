"""The README's results table is the one tools/readme_results.py generates from results/*.json
(the CI check: a figure edited by hand, or a results file rerun without regenerating the README,
fails here), its "ours" column types no number, and the template language reads results files
as documented."""

import json
import os
import re
import string
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
try:
    import readme_results as rr
finally:
    sys.path.pop(0)


def test_the_readme_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md")) as f:
        current = rr.readme_table(f.read())
    generated = rr.table(os.path.join(ROOT, "results"))
    assert current == generated, rr.first_difference(current, generated) + "; run python tools/readme_results.py"


@pytest.mark.parametrize("row", rr.ROWS, ids=lambda row: row.what[:40])
def test_ours_types_no_number(row):
    """Outside its fields an "ours" template has no number (digits in names such as FC3, float64 or
    ResNet-18 are not numbers): every figure there is read from the results."""
    literal = "".join(text for text, *_ in string.Formatter().parse(row.ours))
    assert not re.search(r"(?<!\w)(?<![A-Za-z]-)\d", literal), literal


@pytest.fixture
def results(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps({"rows": [{"name": "a", "acc": 0.90561}, {"name": "b", "acc": 0.97}]}))
    return rr.Results(str(tmp_path))


def test_fields_read_results_files(results):
    fmt = rr.ResultsFormatter(results, {"both": lambda r: rr.mean_std(r("tiny[rows][*][acc]"))}).format
    assert fmt("{tiny[rows][0][acc]:.2p}") == "90.56"  # p: a fraction as a percentage
    assert fmt("{tiny[rows][1][acc]:.3f} {tiny[rows][0][name]}") == "0.970 a"  # plain specs as usual
    assert fmt("{tiny[rows][*][acc]:.1p}") == "90.6 / 97.0"
    assert fmt("{tiny[rows][name=b][acc]:.0p}") == "97"
    assert fmt("{both:+.1p}") == "+93.8 ± 4.6"
    assert rr.format_value(rr.Span(0.5, 2.25), ".1f") == "0.5-2.2"


def test_a_missing_key_names_the_file_and_the_key(results, tmp_path):
    fmt = rr.ResultsFormatter(results).format
    with pytest.raises(KeyError, match=re.escape(f"{tmp_path / 'tiny.json'} has no [rows][0][loss]")):
        fmt("{tiny[rows][0][loss]:.2p}")
    with pytest.raises(KeyError, match=r"tiny\.json has no \[rows\]\[5\]"):
        fmt("{tiny[rows][5][acc]}")
    with pytest.raises(KeyError, match=r"tiny\.json has no \[rows\]\[name=c\] \(0 elements match\)"):
        fmt("{tiny[rows][name=c][acc]}")


def test_check_names_the_first_row_that_differs(tmp_path, capsys):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    lines = rr.table(os.path.join(ROOT, "results")).splitlines()
    number, line = next((i, ln) for i, ln in enumerate(lines) if ln.startswith("| KIP step, FC1, MNIST"))
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(line, line.replace("faster", "slower"), 1))
    args = ["--readme", str(readme), "--results-dir", os.path.join(ROOT, "results")]
    assert rr.main(["--check", *args]) == 1
    assert f"line {number + 1} of the results table ('KIP step, FC1, MNIST" in capsys.readouterr().err
    assert rr.main(args) == 0 and rr.main(["--check", *args]) == 0
    assert readme.read_text() == text
