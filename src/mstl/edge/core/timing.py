"""The timing primitive that export (what keeping layers in float costs) and the bench (every
artifact's latency) both measure with, so their figures mean the same thing."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .metrics import percentiles


def latency(rt, x: np.ndarray, runs: int, warmup: int) -> dict[str, Any]:
    """Steady-state latency of rt.run on one prepared input: the call is all that is timed."""
    run = rt.run
    t0 = time.perf_counter_ns()
    run(x)
    first = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(warmup):
        run(x)
    samples = np.empty(runs)
    clock = time.perf_counter_ns
    for i in range(runs):
        t = clock()
        run(x)
        samples[i] = clock() - t
    stats = percentiles(samples / 1e6)
    stats["first"] = first
    stats["images_per_s"] = 1000.0 / stats["mean"]
    return stats
