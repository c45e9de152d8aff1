"""A .keras classifier runs through the same runtime interface as its exports, by the Keras plugin
(entry point group mstl.runtimes), while mstl.edge.core.runtimes itself never imports TensorFlow."""

import json

import numpy as np
import pytest


def test_a_keras_model_runs_through_load_runtime_as_keras_does(smoke_run):
    from mstl.model import load_classifier
    from mstl.edge.core.runtimes import load_runtime
    path = smoke_run / json.loads((smoke_run / "selection.json").read_text())["model"]
    rt = load_runtime(path)
    assert rt.format == "keras" and rt.name == "Keras"
    pixels = np.random.default_rng(0).integers(0, 256, (3, rt.image_size, rt.image_size, 3), dtype=np.uint8)
    want = load_classifier(path).predict(pixels.astype(np.float32), verbose=0)
    np.testing.assert_allclose(rt.predict(pixels), want, atol=1e-5)


def test_without_the_plugin_a_keras_file_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.metadata
    from mstl.edge.core.runtimes import RuntimeError_, load_runtime
    f = tmp_path / "m.keras"
    f.write_bytes(b"not read")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    with pytest.raises(RuntimeError_, match="no runtime for .keras files is installed"):
        load_runtime(f)


def test_the_edge_runtimes_load_with_tensorflow_blocked():
    from helpers_processes import run_without_tensorflow
    res = run_without_tensorflow("import mstl.edge.core.runtimes, mstl.edge.bench.run, mstl.edge.bench.measure, mstl.edge.app.server, "
                                 "mstl.edge.core.rundir, mstl.edge.core.agreement\nprint('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
