"""Read LiteRT's own `benchmark_model` output (run on a phone over adb, or on a board) into bench rows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core.formats import precision_of

_COUNT = re.compile(r"count=(\d+) first=(\d+) curr=\d+ min=(\d+) max=(\d+) avg=([\d.]+) std=(\d+)"
                    r"(?: p5=(\d+) median=(\d+) p95=(\d+))?")
_TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
                      r"Warmup \(avg\): ([\d.]+), Inference \(avg\): ([\d.]+)")
_MEMORY = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.]+) overall=([\d.]+)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)")
_GRAPH = re.compile(r"^Graph: \[(.+?)\]", re.MULTILINE)
_THREADS = re.compile(r"^(?:Num threads|#threads used for CPU inference): \[(\d+)\]", re.MULTILINE)
_XNN = re.compile(r"^Use xnnpack: \[(\d)\]", re.MULTILINE)


def parse_benchmark_model(text: str, source: str = "") -> dict[str, Any]:
    counts = _COUNT.findall(text)
    timings = _TIMINGS.search(text)
    if not counts or not timings:
        raise ValueError(f"{source or 'benchmark_model output'}: no 'count=... avg=...' and 'Inference timings' "
                         "lines found; pass the complete stdout of benchmark_model")
    count, first, mn, mx, avg, std, p5, median, p95 = counts[-1]  # the last block is the steady state
    graph = _GRAPH.search(text)
    threads = _THREADS.search(text)
    name = Path(graph.group(1)).name if graph else Path(source).name
    n = threads.group(1) if threads else "1"
    us = 1e-3
    lat = {"mean": float(avg) * us, "std": float(std) * us, "min": float(mn) * us, "max": float(mx) * us,
           "first": float(first) * us, "images_per_s": 1e6 / float(avg), "runs": int(count)}
    if median:
        lat.update({"p50": float(median) * us, "p5": float(p5) * us, "p95": float(p95) * us})
    mem = _MEMORY.search(text)
    peak = _PEAK.search(text)
    precision = precision_of(name)
    return {
        "artifact": name, "format": "tflite", "precision": precision, "status": "ok",
        "source": f"LiteRT benchmark_model ({source})", "size_mb": None, "accuracy": None,
        "init_ms": float(timings.group(1)) * us, "first_ms": float(timings.group(2)) * us,
        "latency": {n: lat}, "latency_ms": {n: {"p50": lat.get("p50"), "p90": None, "p99": None, "mean": lat["mean"]}},
        "peak_rss_mb": float(peak.group(1)) if peak else (float(mem.group(2)) if mem else None),
        "xnnpack": (_XNN.search(text).group(1) == "1") if _XNN.search(text) else None,
    }
