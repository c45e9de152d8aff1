"""The caches against the plain path, in one process, on the same data (MobileNetV2 width 1.0, the demo
preset's image size and sizes). Prints one name=value line per figure:

  stage1_epoch_speedup  one trial at 95 frozen layers, seconds per epoch once its cache exists
  sweep_speedup         a whole stage-1 sweep over the demo depths, cache passes included
  stage2_speedup        stage 2 for 25 epochs, embedding pass included
  pipeline_ratio        images/s of fit() through the tf.data pipeline / train_on_batch on in-memory tensors
  sweep_cost_2x         cached sweep time with twice the data / the same with the base data
  feature_pass_img_s    the frozen inference pass as stage 2 runs it (Keras, compiled, batch 256)
  runtime_fp32_img_s    the same network in LiteRT fp32, all cores, batch 32 (an inference runtime's rate)

Goals on 2 CPU cores: >= 1.5, >= 2, >= 10, >= 0.8, <= 2.1.

    .venv/bin/python benchmarks/sweep_speed.py [--quick] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LOCAL_WEIGHTS = HERE.parent.parent / "shared" / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"


class EpochTimer:
    def __init__(self, keras):
        class CB(keras.callbacks.Callback):
            def on_train_begin(cb, logs=None):
                cb.times = []

            def on_epoch_begin(cb, epoch, logs=None):
                cb.t = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                cb.times.append(time.perf_counter() - cb.t)
        self.cb = CB()


def config(quick: bool, weights: str, per_class: int):
    from mstl.config import override, preset
    cfg = preset("demo")
    fixed = {  # a fixed grid and epoch count: the two paths do the same number of trials and epochs
        "stage1.patience": 99, "stage1.early_stopping_patience": 99,
    }
    if quick:
        fixed.update({"stage1.sizes": (48, 96), "stage1.start_frozen": 130, "stage1.min_frozen": 110,
                      "stage1.epochs": 2, "data.image_size": 64, "stage2.target_size": 120})
        per_class = max(per_class // 6, 24)
    cfg = override(cfg, **fixed)
    return replace(cfg, model=replace(cfg.model, weights=weights), demo_bridge_per_class=per_class,
                   demo_target_per_class=cfg.demo_target_per_class if not quick else 40)


def timed_sweep(cfg, cache: bool) -> float:
    from mstl.train.run import prepare, run_stage1
    from mstl.train.store import RunStore
    cfg = replace(cfg, cache=cache)
    data = prepare(cfg, quiet=True)
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(Path(d) / "run")
        store.open(cfg, "bench")
        t = time.perf_counter()
        run_stage1(store, data)
        return time.perf_counter() - t


def litert_rate(model, images, rows, pool_name, keras, batch: int = 32) -> float:
    """Images/s of the frozen network up to the pooled features in LiteRT fp32, at batch 32 on all cores."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from mstl.data.pipeline import gather_array
    extractor = keras.Model(model.inputs, model.get_layer(pool_name).output)
    with tempfile.TemporaryDirectory() as tmp:
        extractor.export(f"{tmp}/sm", format="tf_saved_model", verbose=False)
        data = tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/sm").convert()
    it = Interpreter(model_content=data, num_threads=os.cpu_count())
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [batch] + list(images.shape[1:]))
    it.allocate_tensors()
    out = it.get_output_details()[0]["index"]
    x = gather_array(images, rows[:batch])
    it.set_tensor(inp["index"], x)
    it.invoke()
    t = time.perf_counter()
    n = 0
    for s in range(0, len(rows) - batch + 1, batch):
        it.set_tensor(inp["index"], gather_array(images, rows[s:s + batch]))
        it.invoke()
        it.get_tensor(out)
        n += batch
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check of the script")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--only", default=None, help="comma-separated parts to measure: stage1,stage2,passes,pipeline,sweep")
    a = ap.parse_args()
    parts = set((a.only or "stage1,stage2,passes,pipeline,sweep").split(","))
    weights = a.weights or os.environ.get("MSTL_WEIGHTS") or (str(LOCAL_WEIGHTS) if LOCAL_WEIGHTS.exists() else "none")
    os.environ.setdefault("MSTL_CACHE_DIR", tempfile.mkdtemp(prefix="mstl-bench-cache-"))
    from mstl.tf_env import keras
    from mstl.train.prefix_cache import PrefixCacheStore, cut_for, cut_points
    from mstl.train.run import bn_calibration, prepare
    from mstl.train.stage1 import run_trial
    from mstl.train.stage2 import train_stage2
    from mstl.data.pipeline import gather_array, make_dataset
    from mstl.model import base_of, compile_for_training, freeze, build_classifier

    t_start = time.perf_counter()
    cfg = config(a.quick, weights, 150)
    data = prepare(cfg, quiet=True)
    size = max(data.splits)
    split = data.splits[size]
    cal = bn_calibration(data)
    print(f"# demo preset: {cfg.data.image_size} px, sizes {list(cfg.stage1.sizes)}, weights {weights}, "
          f"{os.cpu_count()} cores", file=sys.stderr)

    if "stage1" in parts:
        # 1. one trial at 95 frozen, seconds per epoch once the cache exists
        with tempfile.TemporaryDirectory() as d:
            store = PrefixCacheStore(Path(d), np.concatenate([split.train, split.val]), "float32", 8e9)
            frozen = 95
            timer_p, timer_c = EpochTimer(keras), EpochTimer(keras)
            e_cfg = replace(cfg, stage1=replace(cfg.stage1, epochs=6))  # median of epochs 2-6

            def with_timer(timer):
                orig = keras.callbacks.EarlyStopping

                class ES(orig):
                    def __init__(self, *args, **kw):
                        super().__init__(*args, **kw)

                    def set_model(self, model):
                        super().set_model(model)
                        timer.cb.set_model(model)

                    def on_train_begin(self, logs=None):
                        super().on_train_begin(logs)
                        timer.cb.on_train_begin(logs)

                    def on_epoch_begin(self, epoch, logs=None):
                        timer.cb.on_epoch_begin(epoch, logs)

                    def on_epoch_end(self, epoch, logs=None):
                        timer.cb.on_epoch_end(epoch, logs)
                        super().on_epoch_end(epoch, logs)
                keras.callbacks.EarlyStopping = ES
                return orig

            orig = with_timer(timer_p)
            run_trial(e_cfg, data.bridge.images, split, 4, frozen, 1, verbose=False, calibration=cal)
            keras.callbacks.EarlyStopping = orig
            cache_time = [0.0]

            def prefix(model, f):
                t = time.perf_counter()
                c = store.get(model, cut_for(f, cut_points(base_of(model))), "bench", data.bridge.images)
                cache_time[0] = time.perf_counter() - t
                return c

            orig = with_timer(timer_c)
            run_trial(e_cfg, data.bridge.images, split, 4, frozen, 1, verbose=False, calibration=cal, prefix=prefix)
            keras.callbacks.EarlyStopping = orig
            plain_epoch = float(np.median(timer_p.cb.times[1:]))
            cached_epoch = float(np.median(timer_c.cb.times[1:]))
            print(f"stage1_epoch_plain_s={plain_epoch:.2f}")
            print(f"stage1_epoch_cached_s={cached_epoch:.2f}")
            print(f"stage1_cache_pass_s={cache_time[0]:.2f}")
            print(f"stage1_epoch_speedup={plain_epoch / cached_epoch:.2f}")


    # 2. stage 2 for 25 epochs, embedding pass included (a threshold above 1 never stops it early)
    # (the model's construction, the same for both, is reported apart: train_seconds runs from the
    # model in hand to test predictions, embedding pass included)
    s2 = replace(cfg, stage2=replace(cfg.stage2, max_epochs=25, stop_train_accuracy=1.01))
    if "stage2" in parts:
        t = time.perf_counter()
        _, r_plain = train_stage2(s2, data.target.images, data.target_splits, 1, None, cache=False)
        total_plain = time.perf_counter() - t
        t = time.perf_counter()
        _, r_cached = train_stage2(s2, data.target.images, data.target_splits, 1, None, cache=True)
        total_cached = time.perf_counter() - t
        print(f"stage2_plain_s={r_plain['train_seconds']:.2f}")
        print(f"stage2_cached_s={r_cached['train_seconds']:.2f}")
        print(f"stage2_model_build_s={total_plain - r_plain['train_seconds']:.2f}")
        print(f"stage2_speedup_with_build={total_plain / total_cached:.2f}")
        print(f"stage2_speedup={r_plain['train_seconds'] / r_cached['train_seconds']:.2f}")
    if "passes" in parts:
        # 3. the frozen inference pass as stage 2 runs it (Keras, compiled, batch 256) against the same
        # network in LiteRT fp32 (all cores, batch 32): what an inference runtime would give
        from mstl.model import POOL_NAME
        from mstl.train.stage2 import _features
        model = build_classifier(cfg.model, cfg.data.image_size, 2, cfg.data.scaling, calibration_images=cal)
        rows = np.concatenate([data.target_splits.train, data.target_splits.val, data.target_splits.test])
        rows = np.resize(rows, max(len(rows), 1024))
        _features(model, data.target.images, rows[:64])  # trace once
        t = time.perf_counter()
        _features(model, data.target.images, rows)
        keras_rate = len(rows) / (time.perf_counter() - t)
        print(f"feature_pass_img_s={keras_rate:.1f}")
        rate = litert_rate(model, data.target.images, rows, POOL_NAME, keras)
        print(f"runtime_fp32_img_s={rate:.1f}")
        print(f"runtime_over_feature_pass={rate / keras_rate:.2f}")
    if "pipeline" not in parts and "sweep" not in parts:
        return

    if "pipeline" in parts:
        # 3. input pipeline: fit() through tf.data from the image cache vs train_on_batch on in-memory tensors
        keras.utils.set_random_seed(1)
        model = build_classifier(cfg.model, cfg.data.image_size, 4, cfg.data.scaling, calibration_images=cal)
        freeze(model, 100)
        compile_for_training(model, 1e-4)
        bs = cfg.stage1.batch_size
        n = (len(split.train) // bs) * bs
        x = gather_array(data.bridge.images, split.train[:n])
        y = split.y_train[:n]
        model.train_on_batch(x[:bs], y[:bs])
        ds = make_dataset(data.bridge.images, split.train[:n], y, bs, shuffle=True, seed=1)
        # fit() compiled as stage 1 compiles it (several batches per call), in its own model so that
        # train_on_batch keeps one batch per call; one epoch of each, alternated, 7 rounds: on this
        # noisy 2-core machine single epochs vary by +-20%, so the figure is the median of paired ratios.
        from mstl.train.stage1 import STEPS_PER_EXECUTION
        keras.utils.set_random_seed(1)
        fit_model = build_classifier(cfg.model, cfg.data.image_size, 4, cfg.data.scaling, calibration_images=cal)
        freeze(fit_model, 100)
        compile_for_training(fit_model, 1e-4, STEPS_PER_EXECUTION)
        fit_model.fit(ds, epochs=1, verbose=0)
        tobs, fits = [], []
        for _ in range(7):
            t = time.perf_counter()
            for s in range(0, n, bs):
                model.train_on_batch(x[s:s + bs], y[s:s + bs])
            tobs.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            fit_model.fit(ds, epochs=1, verbose=0)
            fits.append(n / (time.perf_counter() - t))
        ratios = np.array(fits) / np.array(tobs)
        print(f"train_on_batch_img_s={np.median(tobs):.1f}")
        print(f"fit_pipeline_img_s={np.median(fits):.1f}")
        print(f"pipeline_ratio={np.median(ratios):.2f}  (7 paired epochs: min {ratios.min():.2f}, max {ratios.max():.2f})")
        keras.backend.clear_session()


    if "sweep" in parts:
        # 4. whole sweeps: plain vs cached; cached with twice the data
        plain = timed_sweep(cfg, cache=False)
        cached = timed_sweep(cfg, cache=True)
        print(f"sweep_plain_s={plain:.1f}")
        print(f"sweep_cached_s={cached:.1f}")
        print(f"sweep_speedup={plain / cached:.2f}")
        cfg2 = replace(cfg, stage1=replace(cfg.stage1, sizes=tuple(2 * s for s in cfg.stage1.sizes)),
                       demo_bridge_per_class=2 * cfg.demo_bridge_per_class)
        cached2x = timed_sweep(cfg2, cache=True)
        print(f"sweep_cached_2x_s={cached2x:.1f}")
        print(f"sweep_cost_2x={cached2x / cached:.2f}")
    from mstl.edge.core.machine import cpu_model
    print(f"# total {time.perf_counter() - t_start:.0f}s on {cpu_model()}", file=sys.stderr)


if __name__ == "__main__":
    main()
