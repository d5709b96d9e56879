"""Result tables for benchmarks/ and experiments/: machine facts, the exact command, and
results/<name>.{md,json} written atomically."""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np

from kip import InputError, io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
CODE_PATHS = ("kip", "experiments", "benchmarks")  # what a result's numbers depend on


def machine(code: dict | None = None) -> dict:
    """Where a number was measured: CPU, cores, JAX device, versions, date and the code's commit:
    `code`'s stamp (a `provenance` taken earlier), else the tree's now, with a hash of any
    uncommitted changes."""
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
        # the cores this process may run on (fewer when pinned, e.g. `taskset -c 0`)
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "device": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "OPENBLAS_NUM_THREADS": os.getenv("OPENBLAS_NUM_THREADS"),
        # other jobs on the machine slow every timing: the 1-minute load average when written
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d"),
        "commit": (code or provenance(allow_dirty=True))["stamp"],
    }


def provenance(allow_dirty: bool = False, root: str = ROOT) -> dict:
    """The code a result comes from, taken when a run starts (the modules it runs are loaded then):
    {'commit': short hash, or 'unknown' outside a git checkout, 'stamp': what results files print}.
    Uncommitted changes to CODE_PATHS (tracked or new files; results/ is output, never code) are
    refused with an InputError unless `allow_dirty`, which records the changed paths and a sha256
    of the diff and their contents ('dirty', 'diff_sha256') and says so in the stamp."""
    git = functools.partial(subprocess.run, capture_output=True, cwd=root)
    try:
        head = git(["git", "rev-parse", "--short", "HEAD"], text=True)
    except OSError:
        return {"commit": "unknown", "stamp": "unknown (no git)"}
    if head.returncode != 0:
        return {"commit": "unknown", "stamp": "unknown (not a git checkout)"}
    commit = head.stdout.strip()
    changed = git(["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS], text=True).stdout
    dirty = sorted(line[3:] for line in changed.splitlines() if line.strip())
    if not dirty:
        return {"commit": commit, "stamp": commit}
    if not allow_dirty:
        raise InputError(f"uncommitted changes in {', '.join(CODE_PATHS)} ({', '.join(dirty[:4])}"
                         f"{', ...' if len(dirty) > 4 else ''}): commit them first, or pass --allow-dirty to record "
                         "the diff's hash in the results")
    digest = hashlib.sha256(git(["git", "diff", "HEAD", "--binary", "--", *CODE_PATHS]).stdout)
    for path in dirty:
        full = os.path.join(root, path)
        if os.path.isfile(full):  # new files are not in `git diff`; their contents are hashed too
            with open(full, "rb") as f:
                digest.update(path.encode() + b"\0" + f.read())
    sha = digest.hexdigest()
    return {"commit": commit, "dirty": dirty, "diff_sha256": sha,
            "stamp": f"{commit} + uncommitted changes to {len(dirty)} file(s), diff sha256 {sha[:12]} (--allow-dirty)"}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args` for a script that writes results/: adds --allow-dirty and sets
    `args.provenance` (see `provenance`); a dirty tree without the flag exits 2 in one line,
    before any work."""
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run although kip/, experiments/ or benchmarks/ have uncommitted changes; the results "
                             "then record the diff's sha256 and say so")
    args = parser.parse_args(argv)
    try:
        args.provenance = provenance(args.allow_dirty)
    except InputError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return args


def command_line() -> str:
    """The command that is running, relative to the repository root."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = f"-m {spec.name}" if spec else os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return "python " + " ".join([script, *(shlex.quote(a) for a in sys.argv[1:])])


def write_results(name: str, title: str, body: str, payload: dict, code: dict, results_dir: str = RESULTS) -> None:
    """results/<name>.md (title, command, machine, the code's `provenance` taken at the start, body)
    and results/<name>.json (all of it)."""
    env = machine(code)
    header = (f"# {title}\n\nCommand: `{command_line()}`  \nMachine: {env['cpu']}, {env['cores']} cores, "
              f"{env['device']}, JAX {env['jax']}; commit {env['commit']}; {env['date']}; "
              f"load average {env['load_average']} when written\n\n")
    io.write_bytes(os.path.join(results_dir, f"{name}.md"), (header + body.rstrip() + "\n").encode())
    io.write_json(os.path.join(results_dir, f"{name}.json"),
                  {"command": command_line(), "machine": env, "provenance": code, **payload})
    print(f"wrote {os.path.relpath(results_dir)}/{name}.md and .json")


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of a result over seeds."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def percent(values, digits: int = 1) -> str:
    """Fractions as a table cell in %: "mean ± std" over several values (see `mean_std`), the bare
    value for one (a single seed has no spread to show)."""
    mean, std = mean_std(values)
    return f"{100 * mean:.{digits}f}" + (f" ± {100 * std:.{digits}f}" if len(np.atleast_1d(values)) > 1 else "")


def experiment_args(doc: str, name: str, gpu_help: str, quick_help: str, argv: list[str] | None = None,
                    extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, str, str]:
    """The flags every experiment script with cpu / gpu / quick modes shares (--gpu, --quick,
    --data-dir, --runs-dir, --results-dir, --no-progress, --overwrite, --allow-dirty), plus the script's own added
    by `extra`. Returns (args, mode, runs folder: --runs-dir or runs/<name>_<mode>); `args.provenance`
    is the code's (a dirty tree without --allow-dirty exits 2 here, before any work)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help=gpu_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--runs-dir", default=None, help=f"(default: runs/{name}_<mode>)")
    parser.add_argument("--results-dir", default=RESULTS)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the cells of the runs folder that hold results of other options (without it a "
                             "table names them and stops; finished work is never replaced silently)")
    if extra is not None:
        extra(parser)
    args = parse_args(parser, argv)
    mode = "gpu" if args.gpu else "quick" if args.quick else "cpu"
    return args, mode, args.runs_dir or os.path.join("runs", f"{name}_{mode}")
