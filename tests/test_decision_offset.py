"""The decision offset (export/offset.py): measured as the int8 build's mean log-probability error on
the images nearest the boundary, and taken off the head's bias in the built file - for the int32 bias
of a quantized head and a float one, in LiteRT and ONNX Runtime alike."""

import json

import numpy as np
import pytest

from mstl.edge.core.formats import BuildOptions
from mstl.export.offset import logit_shift, remove


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_shift_is_the_mean_error_of_the_logits_centred_across_classes():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, (400, 3))
    planted = np.array([0.3, -0.1, 0.5])
    got = logit_shift(_softmax(z + planted + rng.normal(0, 0.05, z.shape)), _softmax(z))
    assert got == pytest.approx(planted - planted.mean(), abs=0.01)
    assert logit_shift(_softmax(z), _softmax(z)) == pytest.approx(np.zeros(3), abs=1e-9)


def _classifier(two_heads=False):
    from mstl.tf_env import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if two_heads:  # the softmax reads an addition, not a dense layer's bias
        x = keras.layers.Add()([keras.layers.Dense(2)(x), keras.layers.Dense(2)(x)])
        out = keras.layers.Softmax()(x)
    else:
        # logits over a few units, as a trained head's: the shift moves them inside the output's int8 range
        out = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 3),
                                 bias_initializer=keras.initializers.Constant([0.2, -0.1]))(x)
    return keras.Model(inp, out)  # a trained head has a bias; the converters drop an all-zero one


def _logit_diff(p):
    p = np.clip(p, 1e-6, 1)
    return np.log(p[:, 1]) - np.log(p[:, 0])


def _median_move(tmp_path, fmt, data, patched, rng):
    """How far patching moved the two files' logit difference, on images away from the int8 softmax's
    saturated ends."""
    from mstl.edge.core.runtimes import load_runtime
    (tmp_path / f"a.{fmt}").write_bytes(data)
    (tmp_path / f"b.{fmt}").write_bytes(patched)
    x = rng.integers(0, 256, (200, 16, 16, 3)).astype(np.uint8)
    before = load_runtime(tmp_path / f"a.{fmt}").predict(x)
    after = load_runtime(tmp_path / f"b.{fmt}").predict(x)
    near = np.abs(before[:, 1] - before[:, 0]) < 0.6
    assert near.sum() > 50
    return float(np.median(_logit_diff(after[near]) - _logit_diff(before[near])))


@pytest.mark.parametrize("fmt,precision", [("tflite", "int8"), ("onnx", "int8"), ("tflite", "fp32")])
def test_the_shift_is_taken_off_the_head_of_the_built_file(tmp_path, fmt, precision):
    import importlib
    model = _classifier()
    rng = np.random.default_rng(1)
    cal = rng.integers(0, 256, (64, 16, 16, 3)).astype(np.float32)
    builder = getattr(importlib.import_module(f"mstl.export.{fmt}"), f"build_{precision}")
    data = builder(model, tmp_path, BuildOptions(cal))
    shift = np.array([-0.2, 0.2])
    patched, where = remove(fmt, data, shift)
    assert where["bias"] == ("int32" if precision == "int8" else "float32")  # int8: on the head's own grid
    assert _median_move(tmp_path, fmt, data, patched, rng) == pytest.approx(-0.4, abs=0.06)
    assert len(patched) == pytest.approx(len(data), rel=0.01)


def test_a_head_kept_in_float_between_int8_ops_is_found(tmp_path):
    """The mixed rung may keep the head in float: its dense layer then sits between a dequantize and a
    quantize (measured on the converged X-ray model: the offset was missed there before)."""
    from mstl.export.tflite import MixedBuilder
    model = _classifier()
    rng = np.random.default_rng(1)
    cal = rng.integers(0, 256, (64, 16, 16, 3)).astype(np.float32)
    builder = MixedBuilder(model, tmp_path / "m", BuildOptions(cal))
    head = [n for n in builder.node_macs() if "dense" in n.lower()]
    assert head
    data = builder.build(tuple(head))
    patched, where = remove("tflite", data, np.array([-0.2, 0.2]))
    assert where["bias"] == "float32"
    assert _median_move(tmp_path, "tflite", data, patched, rng) == pytest.approx(-0.4, abs=0.06)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_a_head_that_is_not_a_dense_bias_is_left_as_built(tmp_path, fmt):
    import importlib
    model = _classifier(two_heads=True)
    cal = np.random.default_rng(1).integers(0, 256, (32, 16, 16, 3)).astype(np.float32)
    data = getattr(importlib.import_module(f"mstl.export.{fmt}"), "build_int8")(model, tmp_path, BuildOptions(cal))
    assert remove(fmt, data, np.array([-0.4, 0.4])) is None


@pytest.mark.slow
def test_shipped_int8_artifacts_record_the_offset_they_had_removed(smoke_exports):
    for name in ("classifier-int8.tflite", "classifier-int8.onnx"):
        card = json.loads((smoke_exports / f"{name}.json").read_text())
        off = card["decision_offset"]
        assert off["removed"] and off["bias"] == "int32" and off["images"] > 0
        assert len(off["logit_shift"]) == 2 and sum(off["logit_shift"]) == pytest.approx(0, abs=1e-4)
    fp32 = json.loads((smoke_exports / "classifier-fp32.tflite.json").read_text())
    assert "decision_offset" not in fp32
