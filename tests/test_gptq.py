"""GPTQ weight rounding (export/gptq.py): less output error than nearest rounding on correlated inputs,
and every weight on the grid the converters derive themselves, so nothing is rounded twice."""
import numpy as np
import pytest


def _correlated(rng, n_rows, d, images=4000):
    mix = rng.normal(size=(d, d)) * 0.3 + np.eye(d)
    x = np.maximum(rng.normal(size=(images, d)) @ mix, 0)  # ReLU-like: positive, correlated
    return rng.normal(size=(n_rows, d)), x


def _on_converter_grid(q, levels):
    scale = np.abs(q).max(axis=1, keepdims=True) / levels  # what the converter derives from q itself
    return np.allclose(np.round(q / scale), q / scale, atol=1e-6)


@pytest.mark.parametrize("levels", [64, 127])
def test_gptq_rounds_to_the_converters_grid_with_less_output_error(levels):
    from mstl.export.gptq import gptq_round
    rng = np.random.default_rng(0)
    w, x = _correlated(rng, 24, 48)
    h = x.T @ x / len(x)
    scale = np.abs(w).max(axis=1, keepdims=True) / levels
    nearest = np.round(w / scale) * scale
    q = gptq_round(w, h, levels)
    err = lambda k: np.sqrt((((k - w) @ x.T) ** 2).mean())  # noqa: E731
    assert err(q) < 0.9 * err(nearest)
    assert _on_converter_grid(q, levels)
    np.testing.assert_allclose(np.abs(q).max(axis=1), levels * scale[:, 0], rtol=1e-6)  # same scale found


def test_depthwise_rows_use_their_own_input_moments():
    from mstl.export.gptq import round_folded
    rng = np.random.default_rng(1)
    c, levels = 6, 16
    kernel = rng.normal(size=(3, 3, c, 1))
    xs = [_correlated(rng, 1, 9)[1] for _ in range(c)]
    moments = np.stack([x.T @ x / len(x) for x in xs])
    q = round_folded(kernel, moments, levels, depthwise=True)
    assert q.shape == kernel.shape
    rows, qrows = kernel[..., 0].reshape(9, c).T, q[..., 0].reshape(9, c).T
    assert _on_converter_grid(qrows, levels)
    scale = np.abs(rows).max(axis=1, keepdims=True) / levels
    nearest = np.round(rows / scale) * scale
    gain = [np.linalg.norm((qrows[i] - rows[i]) @ xs[i].T) / np.linalg.norm((nearest[i] - rows[i]) @ xs[i].T)
            for i in range(c)]
    assert np.mean(gain) < 0.95


def test_unknown_rounding_is_refused():
    from mstl.tf_env import keras
    from mstl.export.bias_correction import int8_ready
    inp = keras.Input((8, 8, 3))
    net = keras.Model(inp, keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, use_bias=False)(inp)))
    with pytest.raises(ValueError, match="rounding must be"):
        int8_ready(net, np.zeros((4, 8, 8, 3), np.float32), rounding="adaround")


def test_a_kept_convolution_stays_unrounded_and_the_rest_are_rounded_and_corrected():
    """What a mixed build runs in float keeps float weights (int8_ready(keep=...)); the layers after it are
    still rounded, and their offsets still corrected for what reaches them."""
    from mstl.tf_env import keras
    from mstl.export.bias_correction import int8_ready
    rng = np.random.default_rng(2)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="first")(inp)
    a = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(name="first_bn")(a))
    b = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="second")(a)
    net = keras.Model(inp, keras.layers.BatchNormalization(name="second_bn")(b))
    for layer in (net.get_layer("first"), net.get_layer("second")):
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    before = {n: net.get_layer(n).kernel.numpy().copy() for n in ("first", "second")}
    done = int8_ready(net, rng.uniform(0, 255, (16, 8, 8, 3)).astype(np.float32), equalize=False, keep=frozenset({"first"}))
    assert done["unrounded"] == ["first"]
    np.testing.assert_array_equal(net.get_layer("first").kernel.numpy(), before["first"])
    assert not np.array_equal(net.get_layer("second").kernel.numpy(), before["second"])
    plain = int8_ready(keras.models.clone_model(net), np.zeros((4, 8, 8, 3), np.float32), equalize=False)
    assert "unrounded" not in plain
