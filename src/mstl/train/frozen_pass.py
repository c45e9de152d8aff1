"""Inference-only passes over frozen layers (stage-2 features, stage-1 activation caches), in the
inference runtime when there are enough images to pay for the conversion.

Measured at 96 px on 2 cores (benchmarks/sweep_speed.py --only passes): the compiled Keras pass 431
img/s, the same network in LiteRT fp32 (XNNPACK, batch 32) 1,463 img/s; a conversion costs 4-8 s, so
below ~1,500 images the Keras pass is kept. LiteRT's float32 results equal Keras' to float rounding
(relative 1e-6; tested)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from ..data.pipeline import gather_array
from ..edge.core.progress import say
from ..tf_env import keras, tf

MIN_IMAGES = int(os.environ.get("MSTL_LITERT_PASS_MIN", "1500"))
BATCH = 32


def run(model: "keras.Model", images: np.ndarray, rows: np.ndarray, keras_pass) -> np.ndarray:
    """``model`` (an inference-only Keras model taking raw pixels) on ``images[rows]``: through LiteRT
    when there are at least MIN_IMAGES rows and the conversion works, else ``keras_pass(model, rows)``."""
    runner = litert_runner(model, images, len(rows))
    if runner is None:
        return keras_pass(model, rows)
    return np.concatenate([runner(rows[s:s + BATCH]) for s in range(0, len(rows), BATCH)])


def litert_runner(model: "keras.Model", images: np.ndarray, n_rows: int):
    """``run(rows) -> outputs`` for batches of at most BATCH rows through LiteRT, or None where the Keras
    pass should run instead (too few rows to pay for the conversion, a GPU, or a network the converter
    cannot take - the Keras pass gives the same numbers)."""
    if n_rows < MIN_IMAGES or tf.config.list_physical_devices("GPU"):
        return None
    try:
        from ai_edge_litert.interpreter import Interpreter
        with tempfile.TemporaryDirectory(prefix="mstl-pass-") as tmp:
            model.export(f"{tmp}/sm", format="tf_saved_model", verbose=False)
            flat = tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/sm").convert()
        it = Interpreter(model_content=flat, num_threads=os.cpu_count() or 1)
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], [BATCH] + list(images.shape[1:]))
        it.allocate_tensors()
    except Exception as e:
        say(f"  (LiteRT pass unavailable: {str(e).splitlines()[0][:120]}; using Keras)")
        return None
    out_index = it.get_output_details()[0]["index"]

    def run_batch(part: np.ndarray) -> np.ndarray:
        x = gather_array(images, part)
        if len(part) < BATCH:  # the last batch is padded to the compiled shape, then cut
            x = np.concatenate([x, np.zeros((BATCH - len(part),) + x.shape[1:], x.dtype)])
        it.set_tensor(inp["index"], x)
        it.invoke()
        return np.array(it.get_tensor(out_index)[:len(part)])
    return run_batch
