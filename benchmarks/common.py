"""The neural-tangents side environment, for benchmarks that compare against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kip.report import ROOT

NT_SCRIPT = os.path.join(ROOT, "benchmarks", "nt_reference.py")


def default_nt_python() -> str | None:
    """The side environment's python: $KIP_NT_PYTHON, or .ntenv/ in the repo or ntenv/ beside it."""
    candidates = [os.environ.get("KIP_NT_PYTHON"), os.path.join(ROOT, ".ntenv", "bin", "python"),
                  os.path.join(ROOT, "..", "ntenv", "bin", "python")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


def run_nt(nt_python: str | None, *args: str) -> list[dict]:
    """Runs benchmarks/nt_reference.py in the side environment; one dict per JSON line."""
    if not nt_python:
        print("neural-tangents side environment not found: reference column left empty "
              "(set KIP_NT_PYTHON or create .ntenv, see tests/fixtures/make_nt_fixtures.py)", file=sys.stderr)
        return []
    proc = subprocess.run([nt_python, NT_SCRIPT, *args], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"neural-tangents reference failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
