import numpy as np
import pytest

from conftest import SHARED_WEIGHTS
from mstl.config import ModelConfig


@pytest.fixture(scope="module")
def tiny():
    from mstl.model import build_classifier
    return build_classifier(ModelConfig(alpha=0.35, weights="none", dropout=0.0), 32, 4, "imagenet")


def test_base_has_154_layers_and_freeze(tiny):
    from mstl.model import base_of, freeze
    base = base_of(tiny)
    assert len(base.layers) == 154
    freeze(tiny, 100)
    assert all(not l.trainable for l in base.layers[:100]) and all(l.trainable for l in base.layers[100:])
    freeze(tiny, 154)
    assert not any(l.trainable for l in base.layers)
    with pytest.raises(ValueError):
        freeze(tiny, 200)


def test_scaling_inside_model(tiny):
    from mstl.tf_env import keras
    layer = tiny.get_layer("scaling")
    out = keras.Model(tiny.inputs, layer.output).predict(np.array([[[[0, 127.5, 255]]]], "float32").repeat(32, 1).repeat(32, 2), verbose=0)
    assert np.allclose(out[0, 0, 0], [-1, 0, 1])


def test_new_head_freezes_everything_else(tiny, tmp_path):
    from mstl.model import load_classifier, with_new_head
    m = with_new_head(tiny, 2)
    assert m.output.shape[-1] == 2
    assert [w.name for w in m.trainable_weights] == ["kernel", "bias"]
    m.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(load_classifier(tmp_path / "m.keras").predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)


def test_weights_errors(tmp_path, monkeypatch):
    from mstl.model import WeightsError, build_base
    with pytest.raises(WeightsError, match="not found"):
        build_base(32, 0.35, str(tmp_path / "missing.weights.h5"))
    bad = tmp_path / "w.bin"
    bad.write_bytes(b"x")
    with pytest.raises(WeightsError, match=".weights.h5"):
        build_base(32, 0.35, str(bad))
    import keras

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service not known")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(WeightsError, match="--weights"):
        build_base(96, 1.0, "imagenet")


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="../shared/weights not present")
def test_local_weights_file_loads():
    from mstl.model import build_base
    base = build_base(96, 1.0, str(SHARED_WEIGHTS))
    assert len(base.layers) == 154 and float(np.abs(base.layers[1].get_weights()[0]).sum()) > 0
