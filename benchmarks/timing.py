"""The timing loop every benchmark shares. Standard library only: `nt_reference.py` imports it
in the neural-tangents side environment, which cannot import `kip`."""

from __future__ import annotations

import time
from typing import Callable


def best_seconds(run: Callable[[], object], min_runs: int = 2, min_total: float = 1.0, max_runs: int = 50) -> float:
    """The shortest wall time of `run()` (which must block until its work is done) over at
    least `min_runs` calls and, for fast programs, at least `min_total` seconds of calls (at
    most `max_runs`): a minimum of two millisecond-long runs is still noisy."""
    times: list[float] = []
    while len(times) < min_runs or (sum(times) < min_total and len(times) < max_runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
