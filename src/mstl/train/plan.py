"""`mstl-train plan`: what a sweep will cost before it is paid for - trials, cache sizes, and the wall
time on N workers, from a *simulation* of the schedule the Ray engine runs (schedule.Scheduler), fed
with measured trial times: a run dir's own records, or one short calibration trial.

Nothing here is a measurement of the parallel run; every figure says what it was derived from.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import RunConfig
from ..sweep import sweep_grid
from .schedule import Key, simulate


def fit_seconds(trials: list[dict]) -> tuple[float, float]:
    """Least-squares trial time ``a + b * n_train`` over measured trials (b >= 0); one size: proportional."""
    n = np.array([t["n_train"] for t in trials], float)
    s = np.array([t["seconds"] for t in trials], float)
    if len(set(n)) < 2:
        return 0.0, float(s.mean() / max(n.mean(), 1.0))
    b, a = np.polyfit(n, s, 1)
    if b < 0:
        return float(s.mean()), 0.0
    return float(max(a, 0.0)), float(b)


def plan(cfg: RunConfig, workers: list[int], lookahead: int, trials: list[dict], stage2: list[dict],
         source: str, train_share: float) -> dict:
    """The plan for ``cfg`` on each worker count. ``trials`` / ``stage2``: measured records (a run dir's, or
    a calibration trial's) that give the times; where they also cover a (seed, size, depth) of ``cfg``,
    their validation accuracies drive the stop rule ("measured" scenario). Chains without records get
    two bounding scenarios: the stop rule ending as early as it can, and the whole grid."""
    grid = sweep_grid(cfg)
    seeds = list(cfg.seeds[: max(1, cfg.stage1_seeds)])
    keys: list[Key] = [(seed, size) for seed in seeds for size in cfg.stage1.sizes]
    a, b = fit_seconds(trials)
    measured = {(t["seed"], t["size"], t["frozen"]): t for t in trials}

    def seconds(key: Key, depth: int) -> float:
        t = measured.get((key[0], key[1], depth))
        return float(t["seconds"]) if t else a + b * key[1] * train_share

    covered = all(any((k[0], k[1], d) in measured for d in grid) for k in keys)
    patience = cfg.stage1.patience
    scenarios: dict[str, Callable[[Key, int], float]] = {}
    if covered:
        scenarios["measured"] = lambda k, d: measured.get((k[0], k[1], d), {}).get("val_accuracy", 0.0)
    else:
        scenarios["earliest stop"] = lambda k, d: 1.0 - grid.index(d) * 0.01  # every depth worse: stops at patience
        scenarios["whole grid"] = lambda k, d: grid.index(d) * 0.01  # every depth better: never stops
    s2 = [float(r["seconds"]) for r in stage2]
    if not s2:
        s2_note = "stage 2 not included: no stage-2 record to time it by"
    else:
        n_jobs = len(cfg.seeds) * (len(cfg.stage1.sizes) + (1 if cfg.stage2.control else 0))
        s2 = [float(np.mean(s2))] * n_jobs
        s2_note = f"stage 2: {n_jobs} trial(s) of {np.mean([r['seconds'] for r in stage2]):.1f}s (mean of {len(stage2)} measured)"
    out = {"grid": grid, "chains": len(keys), "source": source, "trial_time_model":
           {"a_s": round(a, 3), "b_s_per_train_image": round(b, 6)}, "stage2": s2_note, "lookahead": lookahead,
           "statement": ("a simulation of the Ray engine's schedule (schedule.Scheduler: chains of the largest "
                         "sizes first, look-ahead with cancellation beyond each stopping point) on identical "
                         "workers, with the trial times above; not a measured parallel run"),
           "scenarios": {}}
    for name, acc in scenarios.items():
        # n_val: the stop rule compares measured accuracies in images, with its tie margin, as the run does
        records = {k: {d: {"val_accuracy": acc(k, d), "n_val": measured.get((k[0], k[1], d), {}).get("n_val")}
                       for d in grid} for k in keys}
        rows = []
        cont = cfg.stage1.mode == "continue"
        base = simulate({k: grid for k in keys}, records, seconds, 1, patience, cont, 0, s2)["wall_s"]
        for n in workers:
            sim = simulate({k: grid for k in keys}, records, seconds, n, patience, cont, lookahead, s2)
            sim["speedup"] = round(base / sim["wall_s"], 2) if sim["wall_s"] else None
            sim["efficiency"] = round(sim["speedup"] / n, 2) if sim["speedup"] else None
            rows.append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in sim.items()})
        out["scenarios"][name] = rows
    return out


def cache_sizes(cfg: RunConfig, grid: list[int], bridge_images: int | None) -> dict:
    """Bytes of the decoded-image cache and of the largest activation cache the sweep will hold."""
    from ..model import build_base
    from .prefix_cache import cut_for, cut_points
    side = cfg.data.image_size
    per_image = side * side * 3
    base = build_base(side, cfg.model.alpha, "none", cfg.model.base)
    cuts = cut_points(base)
    rows = max(cfg.stage1.sizes)
    item = 2 if cfg.prefix_cache == "float16" else 4
    act = {}
    for d in grid:
        c = cut_for(d, cuts)
        if c is not None:
            act[d] = int(np.prod(base.layers[c].output.shape[1:])) * rows * item
    return {"decoded_image_bytes_each": per_image,
            "decoded_bridge_bytes": per_image * bridge_images if bridge_images else None,
            "decoded_largest_size_bytes": per_image * rows,
            "largest_activation_cache_bytes": max(act.values()) if act else 0,
            "activation_cache_bytes_by_depth": act,
            "activation_cache_budget_bytes": int(cfg.cache_budget_gb * 1e9)}


def calibrate(cfg: RunConfig) -> tuple[list[dict], list[dict], int, str]:
    """A short calibration on the configured data: one cold epoch on up to 512 training images of the
    smallest size at the first depth (build, tracing), then one warm epoch on all of them and one on
    half: two measured points for the per-image cost, nothing extrapolated. Trials are then timed at the
    configured epoch count - an upper bound where early stopping ends them sooner."""
    import time
    from dataclasses import replace
    from ..bases import get_base
    from ..edge.core.progress import say
    from .prepare import SplitRows
    from .run import prepare, setup_runtime
    from .stage1 import DepthSession, run_trial
    setup_runtime(cfg)
    data = prepare(cfg)
    size = min(data.splits)
    s = data.splits[size]
    k, kv = min(512, len(s.train)), min(128, len(s.val))
    depth = min(cfg.stage1.start_frozen, get_base(cfg.model.base).n_layers)
    n_classes = len(data.bridge.classes)
    say(f"calibration: {k} training images of size {size} at frozen depth {depth}: 1 cold epoch, then 1 warm "
        f"epoch on {k} and on {k // 2} images")
    c = replace(cfg, stage1=replace(cfg.stage1, epochs=1, early_stopping_patience=99))
    session = DepthSession(c, n_classes, depth, cfg.seeds[0], None, None)
    times = {}
    for label, n in (("cold", k), ("warm", k), ("warm", max(1, k // 2))):
        sub = SplitRows(s.train[:n], s.val[:kv], s.y_train[:n], s.y_val[:kv])
        t0 = time.perf_counter()
        run_trial(c, data.bridge.images, sub, n_classes, depth, cfg.seeds[0], verbose=False, session=session)
        times[(label, n)] = time.perf_counter() - t0
    setup = max(times[("cold", k)] - times[("warm", k)], 0.0)
    epochs = cfg.stage1.epochs
    records = [{"seed": -1, "size": size, "frozen": depth, "n_train": n, "seconds": setup + epochs * t,
                "measured": f"1 warm epoch on {n} images: {t:.2f}s"}
               for (label, n), t in times.items() if label == "warm"]
    source = (f"calibration, measured: 1 warm epoch on {k} images {times[('warm', k)]:.2f}s, on {k // 2} images "
              f"{times[('warm', max(1, k // 2))]:.2f}s, set-up {setup:.1f}s; trials timed at {epochs} epochs "
              "(an upper bound where early stopping ends them sooner)")
    return records, [], len(data.bridge.images), source
