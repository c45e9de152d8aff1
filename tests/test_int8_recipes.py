"""The int8 recipe ladder, the int8-ready model and the per-tensor diagnosis."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mstl.cli.export import app
from mstl.edge.core.formats import FORMATS, MIN_INT8_MAC_SHARE, by_key

runner = CliRunner()


def _swapped(model):
    """The same network with its two classes swapped: an artifact that can never pass the gate."""
    from mstl.tf_env import keras
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    k, b = clone.layers[-1].get_weights()
    clone.layers[-1].set_weights([k[:, ::-1], b[::-1]])
    return clone


def test_every_int8_format_has_a_ladder_that_ends_in_mixed_precision():
    for f in FORMATS:
        if f.precision == "int8":
            assert len(f.ladder) >= 3 and f.ladder[-1].mixed and f.ladder[-2].prepared
            assert not any(r.mixed for r in f.ladder[:-1])
            assert len({r.name for r in f.ladder}) == len(f.ladder)
    assert by_key("tflite-fp32").ladder[0].name == "default"


def test_onnx_ladder_follows_the_cpu_it_is_built_for():
    """Where u8s8 products are exact (VNNI, or not x86) 8-bit weights are tried; on x86 without VNNI
    (or --portable-int8) only 7-bit weights, with u8 or s8 activations - each skip recorded with its reason."""
    from mstl.edge.core.formats import Recipe
    f = by_key("onnx-int8")
    exact = [r.name for r, skip in f.ladder_for(True) if not skip]
    saturating = [(r, skip) for r, skip in f.ladder_for(False)]
    tried = [r for r, skip in saturating if not skip]
    assert exact[0] == "u8s8-minmax" and "u8s8-r7-minmax" not in exact
    assert [r.name for r in tried] == ["u8s8-r7-minmax", "u8s8-r7-bias-corrected", "s8s8-r7-bias-corrected",
                                       "u8s8-r7-gptq-bias-corrected", "mixed"]
    # s8 activations run through the same saturating kernels there: every rung has 7-bit weights
    assert all(r.kwargs.get("reduce_range") for r in tried if not r.mixed)
    assert "s8s8-bias-corrected" in exact and "s8s8-r7-bias-corrected" not in exact
    assert all("AVX2" in skip for r, skip in saturating if skip)
    assert [r.name for r, skip in by_key("tflite-int8").ladder_for(False) if not skip] == \
        [r.name for r in by_key("tflite-int8").ladder]  # LiteRT's int8 kernels are exact everywhere
    with pytest.raises(ValueError, match="cpus must be one of"):
        Recipe("x", cpus="vnni")


@pytest.mark.slow
def test_onnx_int8_exported_on_avx2_without_vnni_has_7_bit_weights(smoke_run, tmp_path, monkeypatch):
    """Detected from the CPU's flags (no --portable-int8): every 8-bit-weight rung is skipped with the
    AVX2-without-VNNI reason, the first rung tried is the 7-bit one, the default gate judges it, and the
    shipped weights keep to 7 bits."""
    import onnx
    from onnx import numpy_helper
    from mstl.export import run as export_run
    monkeypatch.setattr(export_run, "cpu_flags", lambda: ["avx2", "fma"])
    out = tmp_path / "avx2"
    res = runner.invoke(app, [str(smoke_run), "--format", "onnx", "--int8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "classifier-int8.onnx.json").read_text())
    assert card["built_for_cpus"] == "saturating-u8s8" and card["verification"]["status"] == "ok"
    assert card["verification"]["threshold"] == by_key("onnx-int8").min_agreement  # the table's gate, not 0
    ladder = by_key("onnx-int8").ladder
    tried = card["recipes_tried"]
    assert [t["recipe"] for t in tried] == [r.name for r in ladder][:len(tried)]  # in order, up to the one chosen
    skipped = [t for t in tried if t["status"] == "skipped"]
    assert [t["recipe"] for t in skipped] == [r.name for r in ladder[:len(tried)] if r.cpus == "exact-u8s8"]
    assert skipped and skipped[0]["recipe"] == "u8s8-minmax"
    assert all("AVX2 and no VNNI" in t["reason"] and "8-bit weights" in t["reason"] for t in skipped), skipped
    ran = [t for t in tried if t["status"] != "skipped"]
    assert ran[0]["recipe"] == "u8s8-r7-minmax" and 0 <= ran[0]["selection_agreement"] <= 1
    assert card["recipe"] in [t["recipe"] for t in ran] or card["recipe"].endswith("+mixed")
    assert next(r for r in ladder if card["recipe"].startswith(r.name)).cpus != "exact-u8s8"
    g = onnx.load(str(out / "classifier-int8.onnx")).graph
    weights = [numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64  # 7 bits: no int16 pair sum saturates


@pytest.mark.slow
def test_failed_recipe_is_skipped_and_recorded(smoke_run, tmp_path, monkeypatch):
    import mstl.export.tflite as tfl
    real = tfl.build_int8
    calls = []

    def first_broken(model, workdir, opts):  # the first recipe's build is broken, later ones are real
        calls.append(model)
        return real(_swapped(model) if len(calls) == 1 else model, workdir, opts)

    monkeypatch.setattr(tfl, "build_int8", first_broken)
    out = tmp_path / "ladder"
    res = runner.invoke(app, [str(smoke_run), "--format", "tflite", "--int8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = {a["key"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}["tflite-int8"]
    assert row["status"] == "ok" and row["recipe"] == "bias-corrected-activations"
    first = row["recipes_tried"][0]
    assert first["recipe"] == "minmax" and first["status"] == "below the selection target"
    assert first["selection_agreement"] < 0.5
    card = json.loads((out / "classifier-int8.tflite.json").read_text())
    assert card["recipe"] == "bias-corrected-activations"
    assert card["recipes_tried"][0]["status"] == "below the selection target"
    assert card["int8_ready"]["layers"] > 0 and card["calibration"]["images"] > 0


@pytest.mark.slow
def test_gate_failure_never_lands_under_the_default_name(smoke_run, tmp_path, monkeypatch):
    import mstl.export.tflite as tfl
    real = tfl.build_int8
    monkeypatch.setattr(tfl, "build_int8", lambda model, workdir, opts: real(_swapped(model), workdir, opts))
    mixed_init = tfl.MixedBuilder.__init__
    monkeypatch.setattr(tfl.MixedBuilder, "__init__", lambda self, model, workdir, opts: mixed_init(self, _swapped(model), workdir, opts))
    out = tmp_path / "rejected"
    out.mkdir()
    (out / "classifier-int8.tflite").write_bytes(b"an earlier export's file")
    (out / "manifest.json").write_text('{"artifacts": []}')  # an earlier mstl export
    res = runner.invoke(app, [str(smoke_run), "--format", "tflite", "--int8", "--out", str(out)])
    assert res.exit_code == 2 and "classifier-int8-rejected.tflite" in res.output
    assert not (out / "classifier-int8.tflite").exists()
    assert (out / "classifier-int8-rejected.tflite").is_file()
    row = {a["key"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}["tflite-int8"]
    assert row["status"] == "failed" and row["path"] == "classifier-int8-rejected.tflite"
    tried = row["recipes_tried"]
    assert [t["recipe"] for t in tried[:-1]] == [r.name for r in by_key("tflite-int8").ladder][:-1]
    # the mixed rung ran last and could not reach the gate without going under the int8 MAC floor
    assert tried[-1]["recipe"].endswith("+mixed") and tried[-1]["int8_mac_share"] >= MIN_INT8_MAC_SHARE
    card = json.loads((out / "classifier-int8-rejected.tflite.json").read_text())
    assert card["mixed"]["steps"] and all(s["int8_mac_share"] >= MIN_INT8_MAC_SHARE for s in card["mixed"]["steps"])
    assert not any(s["passes"] for s in card["mixed"]["steps"])


def _tiny_net(seed=0):
    from mstl.tf_env import keras
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="c1_BN")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="d1")(x)
    x = keras.layers.BatchNormalization(name="d1_BN")(x)
    x = keras.layers.ReLU(6.0)(x)
    p = keras.layers.Conv2D(4, 1, use_bias=False, name="p1")(x)
    p = keras.layers.BatchNormalization(name="p1_BN")(p)
    q = keras.layers.Conv2D(4, 1, use_bias=False, name="p2")(x)
    q = keras.layers.BatchNormalization(name="p2_BN")(q)
    s = keras.layers.Add(name="add")([p, q])
    x = keras.layers.Conv2D(6, 1, use_bias=False, name="e1")(s)
    x = keras.layers.BatchNormalization(name="e1_BN")(x)
    net = keras.Model(inp, x)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.1, 3, n)])
    # Channels of very different scale, as in MobileNetV2: what equalization and rounding act on.
    k = net.get_layer("p1").kernel.numpy()
    net.get_layer("p1").kernel.assign(k * np.array([1, 10, 0.1, 3], np.float32))
    return net


def test_equalization_keeps_the_float_function():
    from mstl.export.bias_correction import equalize_streams, linear_streams
    net = _tiny_net()
    x = np.random.default_rng(1).normal(0, 1, (32, 16, 16, 3)).astype(np.float32)
    before = np.asarray(net(x))
    streams = linear_streams(net)
    assert len(streams) == 1 and {b.name for b in streams[0]["norms"]} == {"p1_BN", "p2_BN"}
    assert [c.name for c in streams[0]["convs"]] == ["e1"]
    info = equalize_streams(net, x)
    assert info["streams"] == 1
    np.testing.assert_allclose(np.asarray(net(x)), before, rtol=1e-4, atol=1e-4)


def test_bias_correction_removes_the_mean_error_that_rounding_leaves():
    from mstl.export.bias_correction import conv_bn_pairs, int8_ready, round_kernel
    ref = _tiny_net()
    rounded, ready = _tiny_net(), _tiny_net()
    x = np.random.default_rng(2).uniform(0, 255, (64, 16, 16, 3)).astype(np.float32)
    for conv, bn in conv_bn_pairs(rounded):
        round_kernel(conv, bn)
    info = int8_ready(ready, x, equalize=False)
    assert info["layers"] == 5
    want = np.asarray(ref(x)).mean(axis=(0, 1, 2))
    err_rounded = np.abs(np.asarray(rounded(x)).mean(axis=(0, 1, 2)) - want).max()
    err_ready = np.abs(np.asarray(ready(x)).mean(axis=(0, 1, 2)) - want).max()
    assert err_ready < 1e-3 < err_rounded


def test_blame_uses_the_graph_not_the_order():
    from mstl.export.diagnose import blame
    layers = [{"tensor": "a", "layer": "a", "sqnr_db": 40.0, "inputs": []},
              {"tensor": "b", "layer": "b", "sqnr_db": 20.0, "inputs": ["a"]},
              {"tensor": "c", "layer": "c", "sqnr_db": 39.0, "inputs": ["a"]},
              {"tensor": "d", "layer": "d", "sqnr_db": 19.0, "inputs": ["b", "c"]}]
    report = blame(layers)
    assert [l["layer"] for l in report["worst_steps"]][:1] == ["b"]
    assert report["worst_steps"][0]["drop_db"] == pytest.approx(20.0)
    assert {l["layer"]: l["drop_db"] for l in layers}["d"] == pytest.approx(1.0)


@pytest.mark.slow
def test_explain_ranks_a_planted_sensitive_layer_first_in_both_runtimes(tmp_path):
    """A 1x1 convolution whose int8 kernel rounds its real weights to 0 (tests/test_mixed_precision.py's
    planted layer) is the step that loses the most, in LiteRT and in ONNX Runtime alike; its SQNR drop
    is its own (its input survives int8), and the report is saved beside the artifact."""
    from mstl.export import onnx as onnx_export, tflite
    from mstl.export.diagnose import explain_exports
    from mstl.edge.core.formats import BuildOptions
    from mstl.model import load_classifier
    from test_mixed_precision import _plain_images, _planted_classifier
    pixels = _plain_images(tmp_path / "img", 160)
    _planted_classifier(tmp_path / "m.keras", pixels[:100])
    model = load_classifier(tmp_path / "m.keras")
    out = tmp_path / "ex"
    out.mkdir()
    opts = BuildOptions(pixels[:100])
    rows = []
    for fam, mod, int8_opts in (("tflite", tflite, opts), ("onnx", onnx_export, BuildOptions(pixels[:100], activations="uint8"))):
        for precision, build, o in (("fp32", mod.build_fp32, BuildOptions()), ("int8", mod.build_int8, int8_opts)):
            name = f"classifier-{precision}.{fam}"
            work = tmp_path / f"w-{name}"
            work.mkdir()
            data = build(model, work, o)
            (out / name).write_bytes(data)
            rows.append({"name": name, "path": name, "format": fam, "precision": precision, "size_bytes": len(data)})
    reports = explain_exports(out, rows, pixels[100:].astype(np.uint8))
    assert set(reports) == {"classifier-int8.tflite", "classifier-int8.onnx"}
    for name, rep in reports.items():
        worst = rep["worst_steps"]
        assert "planted" in worst[0]["layer"], (name, [(l["layer"], l["drop_db"]) for l in worst])
        assert worst[0]["drop_db"] > 10 and all(worst[0]["drop_db"] >= l["drop_db"] for l in worst), name
        assert (out / f"explain-{name}.json").is_file()


def test_a_misspelt_build_option_fails_loudly():
    from mstl.edge.core.formats import BuildOptions, Recipe
    with pytest.raises(ValueError, match="unknown build option.*activation"):
        BuildOptions().with_recipe(Recipe("typo", (("activation", "int8"),)))
    with pytest.raises(ValueError, match="activations must be one of"):
        BuildOptions().with_recipe(Recipe("bad", (("activations", "int4"),)))
    for f in FORMATS:  # every recipe in the table is well formed
        for r in f.ladder:
            BuildOptions().with_recipe(r)


def test_precision_from_file_names():
    from mstl.edge.core.formats import precision_of
    assert precision_of("runs/x/classifier-int8.tflite") == "int8"
    assert precision_of("classifier-int8-rejected.onnx") == "int8"
    assert precision_of("model.tflite") == "unknown" and precision_of("a-fp16.tflite") == "fp16"


@pytest.mark.slow
@pytest.mark.parametrize("key,ext", [("tflite", "tflite"), ("onnx", "onnx")])
def test_activation_refined_recipe_builds_and_leaves_the_shared_model_as_it_was(smoke_run, tmp_path, monkeypatch, key, ext):
    """The refined recipe measures the built int8 model's own activations (LiteRT by tensor name; ONNX
    Runtime by convolution order), moves the linear offsets, rebuilds - and restores the shared model."""
    import dataclasses
    from pathlib import Path
    from mstl.export import bias_correction
    from mstl.export import run as export_run
    from mstl.export.bias_correction import _container, linear_streams
    f = by_key(f"{key}-int8")
    # tried whatever this machine's CPU (the ONNX one is built for CPUs with exact u8s8 only)
    refine = dataclasses.replace(next(r for r in f.ladder if r.refine), cpus="any")
    only = dataclasses.replace(f, recipes=(refine,))
    job = export_run.job_from_run(smoke_run, [by_key(f"{key}-fp32"), only], tmp_path / "ex", None, 200, "uint8",
                                  {"int8": 0.0, "fp32": 0.999})
    seen = {}
    real = export_run._Int8Ready.refined_build
    real_correct = bias_correction.activation_correct

    def spy(self, builder, work, opts):
        net, _ = _container(self.get(opts))
        before = {bn.name: bn.beta.numpy().copy() for s in linear_streams(net) for bn in s["norms"]}
        out = real(self, builder, work, opts)
        seen["restored"] = all(np.array_equal(before[n], l.beta.numpy()) for n in before for l in net.layers if l.name == n)
        seen["linear"] = len(before)
        return out

    def correct(model, built, pixels, targets):
        seen["shift_before"] = _mean_shift(model, built, pixels, targets)
        done = real_correct(model, built, pixels, targets)
        seen["corrected"] = done["layers"]
        seen["measure"] = (model, pixels, targets)
        return done
    monkeypatch.setattr(export_run._Int8Ready, "refined_build", spy)
    monkeypatch.setattr(bias_correction, "activation_correct", correct)
    manifest = export_run.run_export(job)
    row = {a["key"]: a for a in manifest["artifacts"]}[f"{key}-int8"]
    assert row["recipe"] == refine.name and row["agreement"] is not None
    assert seen["restored"] and seen["linear"] > 0
    assert seen["corrected"] == seen["linear"]  # every linear BatchNorm found in the built model and moved
    shipped = (Path(tmp_path / "ex") / f"classifier-int8.{ext}").read_bytes()
    # What the refinement is for, where it can be exact: the first linear BatchNorm (no corrected layer
    # upstream of it) has its channel means, measured on the shipped bytes, much closer to the float ones
    # than in the first build. (Over all layers at once the correction overshoots on the smoke model -
    # deeper layers are corrected for upstream errors that the upstream corrections then remove - which
    # is why the plain bias-corrected rung stays next on the ladder.)
    after = _mean_shift(*seen["measure"][:1], shipped, *seen["measure"][1:])
    first = next(iter(seen["shift_before"]))
    assert after[first] < 0.5 * seen["shift_before"][first], (first, seen["shift_before"][first], after[first])


def _mean_shift(model, built: bytes, pixels, targets) -> dict:
    """Per linear BatchNorm, in network order: mean over channels of |channel mean in the built int8
    model - float target|."""
    from mstl.export import bias_correction as bc
    net, _ = bc._container(model)
    linear = [bn for s in bc.linear_streams(net) for bn in s["norms"] if bn.name in targets]
    means = bc._onnx_means(net, linear, built, pixels) if built[4:8] != b"TFL3" else bc._litert_means(linear, built, pixels)
    order = [l.name for l in net.layers if l.name in means]
    return {n: float(np.mean(np.abs(means[n] - targets[n]))) for n in order}



@pytest.mark.parametrize("key,gptq_name,nearest_name,levels", [
    ("onnx-int8", "u8s8-r7-gptq-bias-corrected", "u8s8-r7-bias-corrected", 64),
    ("tflite-int8", "gptq-bias-corrected", "bias-corrected", 127)])
def test_the_gptq_rung_gets_an_int8_ready_copy_of_its_own(smoke_run, key, gptq_name, nearest_name, levels):
    """A GPTQ rung's kernels are rounded by GPTQ in a copy apart from the nearest-rounded one the rungs
    before it use (same grid, other rounding), and its card says so. It is the last full-int8 rung of its
    ladder: it costs 2-3x a nearest-rounded rung, so it runs only when those missed."""
    import json
    from mstl.edge.core.formats import BuildOptions
    from mstl.export.run import _Int8Ready
    f = by_key(key)
    gptq = next(r for r in f.ladder if r.name == gptq_name)
    nearest = next(r for r in f.ladder if r.name == nearest_name)
    assert f.ladder[-2] is gptq and gptq.prepared and dict(gptq.kwargs)["rounding"] == "gptq"
    model_path = smoke_run / json.loads((smoke_run / "selection.json").read_text())["model"]
    size = json.loads((smoke_run / "config.json").read_text())["config"]["data"]["image_size"]
    pixels = np.random.default_rng(0).integers(0, 256, (16, size, size, 3)).astype(np.uint8)
    ready = _Int8Ready(model_path, pixels)
    base = BuildOptions(calibration=pixels)
    a, b = ready.get(base.with_recipe(nearest)), ready.get(base.with_recipe(gptq))
    assert a is not b and len(ready.copies) == 2
    assert ready.info(base.with_recipe(gptq))["rounding"] == "gptq"
    assert ready.info(base.with_recipe(nearest))["rounding"] == "nearest"
    assert ready.key(base.with_recipe(gptq)) == (levels, "gptq")
    kernels = [[w.numpy() for w in m.weights if "kernel" in w.path] for m in (a, b)]
    assert any(not np.array_equal(x, y) for x, y in zip(*kernels))
    with pytest.raises(ValueError, match="rounding must be one of"):
        BuildOptions(rounding="stochastic")
