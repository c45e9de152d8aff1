"""A run's data and its serial engine: the stage-1 sweep per size, stage 2 per size plus the control,
selection. Which engine runs the trials is chosen by ``engines``; this module knows none but its own."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..config import RunConfig
from ..edge.core.progress import say
from ..edge.core.rundir import SELECTION
from ..tf_env import enable_determinism, keras, pin_threads, tf
from .prepare import (Source, SplitRows, TargetSplits, bridge_splits, check_disjoint, load_source, resolve_sources,
                      target_splits)
from ..edge.core.sources import index_dataset
from .prefix_cache import PrefixCacheStore
from .stage1 import ensure_best_model, sweep
from .stage2 import choose_deployable, train_stage2
from .store import RunStore, save_model_atomic
from .trials import add_stage2_record, bn_calibration, conditions, stage1_seeds, write_decisions

__all__ = ["RunData", "setup_runtime", "prepare", "run_stage1", "stage2_jobs", "run_stage2", "select",
           "bn_calibration", "stage1_seeds", "add_stage2_record"]

RANDOM_WEIGHTS_NOTICE = (
    "the base has RANDOM weights (--weights none): frozen random features make the depth sweep and the "
    "transfer comparison meaningless - do not read this run's numbers as results (BatchNorm statistics are "
    "re-estimated on 64 training images so that random features do not vanish)"
)


@dataclass
class RunData:
    cfg: RunConfig
    bridge: Source
    target: Source
    splits: dict[int, SplitRows]
    target_splits: TargetSplits
    used_demo: bool


def fix_threads(cfg: RunConfig) -> int:
    """This process's TensorFlow at the config's threads per trial, with deterministic ops; before any
    tensor exists (``setup_runtime``; the CLI also before the demo's weights check, which builds a model).
    Returns the threads it really has."""
    threads = pin_threads(cfg.trial_threads)
    if threads != cfg.trial_threads:
        from ..edge.core.progress import warn
        warn(f"TensorFlow started before its threads were set: trials here run with {threads or 'its default'} "
             f"thread(s), not trial_threads={cfg.trial_threads}; their records say so, and their numbers may "
             "differ in the last digits from a run with the configured count")
    enable_determinism()
    return threads


def setup_runtime(cfg: RunConfig) -> None:
    fix_threads(cfg)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except RuntimeError:
            pass
    say(f"device: {len(gpus)} GPU(s)" if gpus else "device: CPU only (training at paper scale is GPU work)")


def prepare(cfg: RunConfig, quiet: bool = False) -> RunData:
    bridge_path, target_path, used_demo = resolve_sources(cfg)
    if used_demo:
        say("no dataset given: using the embedded demo datasets (synthetic; numbers say nothing medical)")
    bridge_index, target_index = index_dataset(bridge_path), index_dataset(target_path)
    check_disjoint(bridge_index, target_index)  # before any image is decoded
    bridge = load_source(bridge_path, cfg, "bridge", quiet, bridge_index)
    target = load_source(target_path, cfg, "target", quiet, target_index)
    splits = bridge_splits(bridge, cfg)
    t = target_splits(target, cfg)
    say(f"target: positive class {t.mapping.positive!r}; train {len(t.train)}, val {len(t.val)}, test {len(t.test)}"
        + (f", operating-point carve-out {len(t.operating)} (held out of training)" if len(t.operating) else ""))
    return RunData(cfg, bridge, target, splits, t, used_demo)


def run_stage1(store: RunStore, data: RunData) -> dict[tuple[int, int], dict]:
    """The sweep of every size, in this process. Returns the best record per (size, seed)."""
    cfg = data.cfg
    n_classes = len(data.bridge.classes)
    calibration = bn_calibration(data)
    prefix = None
    if cfg.cache:
        rows = np.concatenate([np.concatenate([s.train, s.val]) for s in data.splits.values()])
        prefix = PrefixCacheStore(store.dir / "cache", rows, cfg.prefix_cache, cfg.cache_budget_gb * 1e9,
                                  identity=store.config_hash())
    best = {}
    t0 = time.monotonic()
    for seed in stage1_seeds(cfg):
        say(f"stage 1: sizes {sorted(data.splits)}, seed {seed}, depth by depth"
            + ("" if prefix else " (no activation cache)"))
        for size, b in sweep(cfg, store, data.bridge.images, data.splits, n_classes, seed, calibration, prefix).items():
            best[(size, seed)] = b
            say(f"stage 1: size {size}: optimal frozen depth {b['frozen']} (val_acc {b['val_accuracy']:.3f})")
    if prefix:
        prefix.clear()
    write_decisions(store, cfg)
    say(f"stage 1 done in {time.monotonic() - t0:.0f}s")
    return best


def stage2_jobs(store: RunStore, data: RunData) -> tuple[list[tuple], int]:
    """Stage 2's trials still to run - (size, seed, stage-1 model path or None, its frozen depth, its
    stage-1 seed), the control first - and how many the study has in all. Any engine runs these."""
    cfg = data.cfg
    n_classes = len(data.bridge.classes)
    s1_seeds = stage1_seeds(cfg)
    done = store.stage2_done()
    jobs = [(0, s) for s in cfg.seeds if cfg.stage2.control] + [(size, s) for size in sorted(data.splits) for s in cfg.seeds]
    todo = []
    for size, seed in jobs:
        if (size, seed) in done:
            continue
        src_seed = seed if seed in s1_seeds else s1_seeds[0]
        path = frozen = None
        if size:
            path, frozen = ensure_best_model(cfg, store, data.bridge.images, data.splits[size], size, n_classes, src_seed,
                                             bn_calibration(data))
        todo.append((size, seed, path, frozen, src_seed))
    return todo, len(jobs)


def run_stage2(store: RunStore, data: RunData, todo: list[tuple], n_jobs: int) -> None:
    """Stage 2's ``todo`` trials (``stage2_jobs``) in this process, one after another."""
    cfg = data.cfg
    features: dict = {}  # pooled features per frozen network, shared by its seeds
    for i, (size, seed, path, frozen, src_seed) in enumerate(todo):
        what = f"size {size}" if size else f"control (base weights {cfg.model.weights}, no bridge)"
        say(f"stage 2: {what}, seed {seed} ({i + 1} of {len(todo)} to run, {n_jobs} in all)")
        model, rec = train_stage2(cfg, data.target.images, data.target_splits, seed, path, cache=cfg.cache,
                                  feature_memo=features)
        save_model_atomic(model, store.stage2_model(size, seed))
        rec.update({"engine": "serial", **conditions(tf.config.threading.get_intra_op_parallelism_threads())})
        add_stage2_record(store, rec, (size, seed, path, frozen, src_seed))
        val = "no validation split" if rec["val_accuracy"] is None else f"val {rec['val_accuracy']:.3f}"
        say(f"  -> test accuracy {rec['accuracy']:.3f} [{rec['ci_low']:.3f}, {rec['ci_high']:.3f}], "
            f"{val}, {rec['epochs']} epoch(s), {rec['seconds']:.1f}s")
        keras.backend.clear_session()


def select(store: RunStore) -> dict:
    """The deployable model among the stage-2 records, into selection.json."""
    selection = choose_deployable(store.stage2_records())
    store.write_json(SELECTION, selection)
    say(f"deployable model: size {selection['size']} seed {selection['seed']} - {selection['why']}")
    if "warning" in selection:
        say(f"  note: {selection['warning']}")
    return selection
