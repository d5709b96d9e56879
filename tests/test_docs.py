"""The documentation site builds with no warnings (mkdocs --strict: a broken reference fails
CI), its API pages carry every public name of kip.kernels, kip.krr and kip.distill, and its
command-line page is the parser's own help."""

import importlib
import inspect
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    return out


def _public_names(module) -> list[str]:
    """What a module offers: its __all__, else the functions and classes it defines and its
    upper-case constants."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if inspect.isfunction(value) or inspect.isclass(value):
            if value.__module__ == module.__name__:
                names.append(name)
        elif name.isupper():
            names.append(name)
    return names


@pytest.mark.parametrize("module", ["kernels", "krr", "distill", "table"])
def test_the_api_pages_carry_every_public_name(site, module):
    page = (site / "api" / module / "index.html").read_text()
    names = _public_names(importlib.import_module(f"kip.{module}"))
    assert len(names) >= 5
    missing = [n for n in names if f'id="kip.{module}.{n}"' not in page]
    assert not missing


def test_the_command_line_page_is_kip_help(site):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import mkdocs_hooks
    finally:
        sys.path.pop(0)
    page = mkdocs_hooks.cli_page()
    env = {**os.environ, "COLUMNS": mkdocs_hooks.HELP_COLUMNS}
    for argv in (["--help"], ["distill", "--help"], ["trajectories", "--help"]):
        shown = subprocess.run([sys.executable, "-m", "kip.cli", *argv], capture_output=True, text=True, env=env, cwd=ROOT).stdout
        assert shown.strip() and shown.strip() in page
    assert "kip distill" in (site / "cli" / "index.html").read_text()
