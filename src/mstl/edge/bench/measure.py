"""Measure one artifact in its own process (a process's peak memory only grows, so artifacts
measured side by side would inherit each other's peaks)."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import time
from typing import Any

import numpy as np

from ..core.metrics import classification_report, percentiles
from ..core.runtimes import RuntimeError_, load_runtime
from ..core.timing import latency


def _peak_rss_mb() -> float:
    """This process's own peak resident memory.

    Linux's ru_maxrss survives fork+exec, so a spawned worker would report its parent's size (a
    pytest or notebook parent holding TensorFlow: 1.2 GB for a 3 MB model); VmHWM belongs to the
    worker's own address space."""
    from ..core.machine import proc_status_mb
    own = proc_status_mb("VmHWM")
    if own is not None:
        return own
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


def end_to_end(rt, files: list[str], runs: int, prep=None) -> dict[str, float]:
    """File -> label latency as an app sees it: decode (EXIF, colour), resize, quantize, infer, argmax."""
    from ..core.preprocess import Preprocess
    prep = prep or Preprocess(rt.image_size)
    samples = []
    for i in range(runs):
        f = files[i % len(files)]
        t = time.perf_counter_ns()
        pixels = prep.load(f)
        int(np.argmax(rt.output_probs(rt.run(rt.prepare(pixels)))))
        samples.append((time.perf_counter_ns() - t) / 1e6)
    return percentiles(samples)


def measure(path: str, threads: list[int], runs: int, warmup: int, pixels: "np.ndarray | str | None",
            labels: np.ndarray | None, class_names: list[str] | None, e2e_files: list[str], prep=None) -> dict[str, Any]:
    """Everything measured for one artifact. Runs inside a fresh worker process.

    ``pixels`` may be the path of a .npy file: it is then memory-mapped and read only for the accuracy
    pass, after the peak memory of loading and running the model has been taken - so the peak says
    what the model costs, not what the labelled set weighs."""
    if isinstance(pixels, (str, os.PathLike)):
        pixels = np.load(pixels, mmap_mode="r")
    out: dict[str, Any] = {"artifact": str(path), "size_mb": os.path.getsize(path) / 1e6, "latency_ms": {},
                           "latency": {}}
    rt = None
    for n in threads:
        t0 = time.perf_counter_ns()
        rt = load_runtime(path, threads=n)
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        x = rt.prepare(np.full((1, rt.image_size, rt.image_size, 3), 127, np.uint8))
        if pixels is not None and len(pixels):
            x = rt.prepare(pixels[:1])
        stats = latency(rt, x, runs, warmup)
        if "init_ms" not in out:
            out["init_ms"], out["first_ms"] = init_ms, stats["first"]
        out["latency"][str(n)] = {**stats, "init_ms": init_ms}
        out["latency_ms"][str(n)] = {k: stats[k] for k in ("p50", "p90", "p99", "mean")}
    out.update({"runtime": f"{rt.name} {rt.version}", "xnnpack": rt.xnnpack, "input_dtype": str(rt.input_dtype),
                "image_size": rt.image_size})
    if e2e_files:
        out["e2e_ms"] = end_to_end(rt, e2e_files, min(runs, 50), prep)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["accuracy"] = None
    if pixels is not None and labels is not None and len(pixels):
        probs = rt.predict(pixels)
        out["probs"] = probs.tolist()
        out["metrics"] = classification_report(labels, probs, class_names)
        out["accuracy"] = out["metrics"]["accuracy"]
    return out


def _worker(args, queue):
    try:
        queue.put(("ok", measure(*args)))
    except RuntimeError_ as e:
        queue.put(("error", str(e)))
    except Exception as e:  # reported as that artifact's failure; the others are still measured
        queue.put(("error", f"{args[0]}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


DEFAULT_TIMEOUT_S = 1800  # one artifact's measurement (all its thread counts) before its worker is killed


def measure_isolated(path: str, threads: list[int], runs: int, warmup: int, pixels, labels, class_names,
                     e2e_files: list[str], timeout: float = DEFAULT_TIMEOUT_S, prep=None) -> dict[str, Any]:
    """``measure`` in a spawned process. A worker that dies (segfault, out-of-memory kill) is noticed
    within a second and reported with its exit signal; one that hangs is killed after ``timeout``
    seconds and reported so; either way the caller goes on with the next artifact."""
    import queue as queue_mod
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=((path, threads, runs, warmup, pixels, labels, class_names, e2e_files, prep), queue))
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                status, payload = queue.get(timeout=1.0)
                break
            except queue_mod.Empty:
                if not proc.is_alive():
                    try:  # the result may have landed just before the process ended
                        status, payload = queue.get(timeout=1.0)
                        break
                    except queue_mod.Empty:
                        return {"artifact": str(path), "status": "failed", "error": f"{path}: {_death(proc.exitcode)}"}
                if time.monotonic() > deadline:
                    proc.kill()
                    return {"artifact": str(path), "status": "failed",
                            "error": f"{path}: no result within {timeout:g} s (--timeout); the measuring process "
                                     "hung and was killed"}
    finally:
        proc.join(timeout=10)
        if proc.is_alive():  # reported, then hung on the way out (a runtime's thread pool at exit): not left running
            proc.kill()
            proc.join(timeout=10)
    if status == "error":
        return {"artifact": str(path), "status": "failed", "error": payload}
    payload["status"] = "ok"
    return payload


def _death(code: int | None) -> str:
    import signal
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if name == "SIGKILL" else " (the runtime crashed)" if name in ("SIGSEGV", "SIGABRT", "SIGBUS") else ""
        return f"the measuring process died with {name}{hint}"
    return f"the measuring process exited with code {code} before reporting"
