"""The notebooks in examples/ run from a fresh kernel, top to bottom, in their quick mode
(KIP_NOTEBOOK_QUICK=1), each ending in a figure: a notebook that stops working fails CI."""

import glob
import os

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "examples", "*.ipynb")))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_a_notebook_runs_in_its_quick_mode_and_draws(path, monkeypatch):
    from conftest import SHARED_DATASETS

    monkeypatch.setenv("KIP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("KIP_DATA_DIR", SHARED_DATASETS)  # absent: the notebooks fall back to the embedded digits
    monkeypatch.setenv("PYTHONPATH", ROOT)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # the committed copy was executed too, so that it renders with its figures where code is browsed
    committed = nbformat.read(path, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in committed.cells if c.cell_type == "code" for o in c.outputs)
