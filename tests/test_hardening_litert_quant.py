"""LiteRT input quantization and tensor dequantization written once (mstl.edge.core.runtimes.to_input / to_float /
litert_quant), for the runtimes, export's bias correction and the layer diagnosis (issue 22)."""

import numpy as np

from mstl.edge.core.runtimes import Quant, Runtime, litert_quant, to_float, to_input

PIXELS = np.array([[0, 1, 127, 128, 200, 255]], np.uint8)


def test_an_input_on_the_identity_grid_is_passed_as_it_is():
    x = to_input(PIXELS, np.uint8, Quant(1.0, 0))
    assert x is PIXELS
    assert to_input(PIXELS, np.uint8, None) is PIXELS


def test_a_quantized_input_is_rounded_and_clipped_to_its_type():
    q = Quant(2.0, -128)
    got = to_input(PIXELS, np.int8, q)
    want = np.clip(np.rint(PIXELS.astype(np.float32) / 2.0 - 128), -128, 127).astype(np.int8)
    assert got.dtype == np.int8 and np.array_equal(got, want)
    assert got.tolist() == [[-128, -128, -64, -64, -28, 0]]  # np.rint: halves to the even neighbour


def test_pixels_over_an_int8_input_clip_instead_of_wrapping():
    for quant in (Quant(1.0, 0), None):  # 200 as int8 wrapped to -56 in the layer diagnosis
        assert to_input(PIXELS, np.int8, quant).tolist() == [[0, 1, 127, 127, 127, 127]]


def test_a_float_input_takes_float32():
    got = to_input(PIXELS, np.float32, Quant(0.5, 3))
    assert got.dtype == np.float32 and got.tolist() == PIXELS.astype(np.float32).tolist()


def test_tensors_dequantize_with_their_own_scale_and_zero_point():
    t = np.array([0, 10, 255], np.uint8)
    assert to_float(t, Quant(0.5, 10)).tolist() == [-5.0, 0.0, 122.5]
    assert to_float(t, None).dtype == np.float32 and to_float(t, None).tolist() == [0.0, 10.0, 255.0]


def test_litert_details_give_the_quant_or_none():
    assert litert_quant({"quantization": (np.float32(0.25), np.int32(-3))}) == Quant(0.25, -3)
    assert litert_quant({"quantization": (0.0, 0)}) is None and litert_quant({}) is None


def test_the_runtime_prepares_and_reads_outputs_through_them():
    rt = Runtime()
    rt.input_dtype, rt.input_quant, rt.output_quant = np.dtype(np.int8), Quant(2.0, -128), Quant(1 / 256, -128)
    assert np.array_equal(rt.prepare(PIXELS[0].reshape(1, 2, 3)), to_input(PIXELS.reshape(1, 1, 2, 3), np.int8,
                                                                            rt.input_quant))
    assert rt.output_probs(np.array([[-128, 0]], np.int8)).tolist() == [[0.0, 0.5]]
