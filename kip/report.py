"""Result tables for benchmarks/ and experiments/: machine facts, the exact command, and
results/<name>.{md,json} written atomically."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np

from kip import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")


def machine() -> dict:
    """Where a number was measured: CPU, cores, JAX device, versions, date and commit."""
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
        # other jobs on the machine slow every timing: the 1-minute load average when written
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if out.returncode != 0:
            return "unknown"
        # results/ is output, not code: rewriting a results file there does not make the code dirty
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+local changes" if dirty else "")
    except OSError:
        return "unknown"


def command_line() -> str:
    """The command that is running, relative to the repository root."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = f"-m {spec.name}" if spec else os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return "python " + " ".join([script, *(shlex.quote(a) for a in sys.argv[1:])])


def write_results(name: str, title: str, body: str, payload: dict, results_dir: str = RESULTS) -> None:
    """results/<name>.md (title, command, machine, body) and results/<name>.json (all of it)."""
    env = machine()
    header = (f"# {title}\n\nCommand: `{command_line()}`  \nMachine: {env['cpu']}, {env['cores']} cores, "
              f"{env['device']}, JAX {env['jax']}; commit {env['commit']}; {env['date']}; "
              f"load average {env['load_average']} when written\n\n")
    io.write_bytes(os.path.join(results_dir, f"{name}.md"), (header + body.rstrip() + "\n").encode())
    io.write_json(os.path.join(results_dir, f"{name}.json"), {"command": command_line(), "machine": env, **payload})
    print(f"wrote {os.path.relpath(results_dir)}/{name}.md and .json")


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of a result over seeds."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def experiment_args(doc: str, name: str, gpu_help: str, quick_help: str, argv: list[str] | None = None,
                    extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, str, str]:
    """The flags every experiment script with cpu / gpu / quick modes shares (--gpu, --quick,
    --data-dir, --runs-dir, --results-dir, --no-progress), plus the script's own added by `extra`.
    Returns (args, mode, runs folder: --runs-dir or runs/<name>_<mode>)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help=gpu_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--runs-dir", default=None, help=f"(default: runs/{name}_<mode>)")
    parser.add_argument("--results-dir", default=RESULTS)
    parser.add_argument("--no-progress", action="store_true")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    mode = "gpu" if args.gpu else "quick" if args.quick else "cpu"
    return args, mode, args.runs_dir or os.path.join("runs", f"{name}_{mode}")
