"""What every benchmark shares: the neural-tangents side environment, machine facts, and
writing results/<name>.{md,json} with the command that produced them."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time

import jax

from kip import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
NT_SCRIPT = os.path.join(ROOT, "benchmarks", "nt_reference.py")


def default_nt_python() -> str | None:
    """The side environment's python: $KIP_NT_PYTHON, or .ntenv/ in the repo or beside it."""
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


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = jax.devices()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+local changes" if dirty else "")
    except OSError:
        return "unknown"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_results(name: str, title: str, body: str, payload: dict) -> None:
    """results/<name>.md (human) and results/<name>.json (everything), atomically."""
    env = machine()
    header = (f"# {title}\n\nCommand: `{command_line()}`  \nMachine: {env['cpu']}, {env['cores']} cores, "
              f"{env['device']}, JAX {env['jax']}; commit {env['commit']}; {env['date']}\n\n")
    io.write_bytes(os.path.join(RESULTS, f"{name}.md"), (header + body.rstrip() + "\n").encode())
    io.write_json(os.path.join(RESULTS, f"{name}.json"), {"command": command_line(), "machine": env, **payload})
    print(f"wrote results/{name}.md and results/{name}.json")
