"""The gate's selection/confirmation split and the mixed-precision rung: a planted sensitive layer is
found and kept in float; the int8 share of multiply-accumulates is read from the artifact itself."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mstl.cli.export import app
from mstl.export.gate import SELECTION_SHARE, Gate, selection_target, split
from mstl.export.mixed import Candidate, fewest_float

runner = CliRunner()


def test_split_is_fixed_and_disjoint():
    a, b = split(3000), split(3000)
    assert (a == b).all() and a.sum() == 1000 and 0.3 < SELECTION_SHARE < 0.5
    g = Gate.build(np.zeros((3000, 1)), np.zeros((3000, 2)), None, np.zeros(3000, bool))
    assert not (g.selection & g.confirmation).any() and (g.selection | g.confirmation).all()
    assert selection_target(0.99) == pytest.approx(0.9975) and selection_target(0.999) < 1


def test_confirmation_judges_and_selection_only_chooses():
    """The verdict comes from the confirmation images: flips planted in the selection part alone
    leave it ok, in the confirmation part alone make it fail."""
    rng = np.random.default_rng(0)
    ref = np.stack([p := rng.uniform(0.7, 1, 3000), 1 - p], 1)
    g = Gate.build(np.zeros((3000, 1)), ref, None, np.zeros(3000, bool))
    on_sel, on_conf = ref.copy(), ref.copy()
    on_sel[np.flatnonzero(g.selection)[:50]] = ref[np.flatnonzero(g.selection)[:50]][:, ::-1]
    on_conf[np.flatnonzero(g.confirmation)[:50]] = ref[np.flatnonzero(g.confirmation)[:50]][:, ::-1]
    a, b = g.judge(on_sel, 0.99), g.judge(on_conf, 0.99)
    assert a["status"] == "ok" and not a["selection"]["passes"] and a["n_compared"] == 2000
    assert b["status"] == "failed" and b["selection"]["passes"] and b["flips"] == 50
    assert not a["provisional"]
    small = Gate.build(np.zeros((300, 1)), ref[:300], None, np.zeros(300, bool)).judge(ref[:300], 0.99)
    assert small["provisional"] and "provisional" in small["warning"]


def test_gate_sources_never_overlap_calibration():
    from mstl.export.run import ExportJob, _gate_sources
    job = ExportJob(model_path=None, out_dir=None, formats=[], labels=["a", "b"], image_size=8,
                    resize_method="bilinear", scaling="x", verify_sources=["t1", "t2", "c1"],
                    verify_labels=np.array([0, 1, 0]), calibration_sources=["c0", "c1", "c2", "t1"],
                    calibration_labels=np.array([0, 0, 1, 1]), gate_extra_sources=["e1", "c0", "e1", "t2"])
    sources, labels, held = _gate_sources(job, np.array([0, 1]))  # c0, c1 calibrate
    assert sources == ["t1", "t2", "c2", "e1"]
    assert labels.tolist() == [0, 1, 1, -1] and held.tolist() == [True, True, False, False]


def _cands(n, macs=10):
    return [Candidate(f"l{i}", macs, float(n - i)) for i in range(n)]


def _macs(n, macs=10, total=1000):
    """Node MACs for ``_cands(n, macs)`` plus the rest of a graph of ``total`` MACs."""
    return {**{f"l{i}": macs for i in range(n)}, "rest": total - n * macs}


def test_search_finds_the_fewest_float_layers():
    calls = []

    def attempt(names):
        calls.append(len(names))
        return {"passes": len(names) >= 5, "agreement": 0.9 + 0.01 * len(names)}
    found = fewest_float(_cands(20), _macs(20), attempt)
    assert found["chosen"]["float_candidates"] == 5 and found["float_nodes"] == [f"l{i}" for i in range(5)]
    assert calls == [1, 2, 4, 8, 6, 5] and found["chosen"]["int8_mac_share"] == pytest.approx(0.95)


def test_search_never_goes_under_the_mac_floor():
    seen = []

    def attempt(names):
        seen.append(len(names))
        return {"passes": False, "agreement": 0.5}
    found = fewest_float(_cands(20, macs=50), _macs(20, macs=50), attempt)  # 4 layers = 20% of the MACs
    assert max(seen) == 4 and not found["chosen"]["passes"]
    assert all(s["int8_mac_share"] >= 0.8 for s in found["steps"])


def _stem(size, seed):
    """Pixels -> scaling -> a strided 3x3 convolution, BatchNorm, ReLU6: the planted models' first layers."""
    from mstl.tf_env import keras
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scaling")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="c0")(x)
    x = keras.layers.BatchNormalization(name="c0_BN")(x)
    return keras, inp, keras.layers.ReLU(6.0, name="c0_relu")(x)


def _decisive_head(model, pixels):
    """The head reads the pooled features' first principal direction, scaled to logit differences of
    about +-30: answers are decisive, and only what int8 does upstream can flip them."""
    from mstl.tf_env import keras
    feats = np.asarray(keras.Model(model.inputs, model.get_layer("pool").output)(pixels.astype(np.float32)))
    centred = feats - feats.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    v *= 30.0 / (centred @ v).std()
    head = model.get_layer("target_head")
    head.kernel.assign(np.stack([v / 2, -v / 2], 1).astype(np.float32))
    head.bias.assign(np.array([-(feats.mean(0) @ v) / 2, (feats.mean(0) @ v) / 2], np.float32))


def _planted_classifier(path, pixels=None, size=32):
    """A small convolutional classifier with a planted sensitive layer: the 1x1 convolution "planted"
    has, on an input channel that is always 0, weights 300x its others. The float model ignores them;
    per-channel int8 sets every output channel's scale by them and rounds the real weights to 0. With
    ``pixels``, BatchNorm takes their statistics and the head reads the pooled features' first
    principal direction, scaled so that answers are decisive: everything else survives int8."""
    keras, inp, x = _stem(size, 3)
    x = keras.layers.Conv2D(4, 1, name="planted")(x)  # 13% of the MACs: within the int8 floor
    x = keras.layers.ReLU(6.0, name="planted_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="target_head")(x)
    model = keras.Model(inp, out, name="classifier")
    bn = model.get_layer("c0_BN")
    if pixels is not None:  # the images' own statistics, so that activations are not tiny
        a = np.asarray(keras.Model(inp, bn.input)(pixels.astype(np.float32)))
        bn.moving_mean.assign(a.mean((0, 1, 2)))
        bn.moving_variance.assign(a.var((0, 1, 2)) + 1e-3)
    g, b = bn.gamma.numpy(), bn.beta.numpy()
    g[0], b[0] = 0.0, -1.0  # ReLU6 of a negative constant: input channel 0 of "planted" is always 0
    bn.gamma.assign(g)
    bn.beta.assign(b)
    conv = model.get_layer("planted")
    k = conv.kernel.numpy()
    conv.bias.assign(np.full(4, 0.5, np.float32))
    k[0, 0, 0, :] = 300 * np.abs(k).max()
    conv.kernel.assign(k)
    if pixels is not None:
        _decisive_head(model, pixels)
    model.save(path)
    return model


def test_standalone_export_refuses_too_few_images_to_keep_calibration_apart(demo_data, tmp_path):
    model_path = tmp_path / "m.keras"
    _planted_classifier(model_path)
    res = runner.invoke(app, [str(tmp_path / "no-run"), "--model", str(model_path), "--data", str(demo_data["cxr"]),
                              "--int8", "--out", str(tmp_path / "e")])
    assert res.exit_code != 0
    assert "the gate needs at least 100 images that did not calibrate" in res.output
    assert "60 images, 60 of them to calibrate" in res.output


def _plain_images(root, n, seed=0, size=32):
    """Noise images of varied brightness and contrast (what the planted model's features read), split
    into two labelled class folders and a flat folder of unlabelled extras for the gate."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(n):
        a = np.clip(rng.uniform(30, 225) + rng.normal(0, rng.uniform(5, 60), (size, size, 3)), 0, 255).astype(np.uint8)
        folder = root / "data" / "ab"[i % 2] if i < n // 2 else root / "extra"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{i:04d}.png")
        arrays.append(a)
    return np.stack(arrays).astype(np.float32)


def test_a_planted_sensitive_layer_is_found_and_kept_in_float(tmp_path):
    """Every full-int8 rung loses about half the answers; the mixed rung ranks the planted layer first,
    keeps it (and nothing it need not) in float, and ships under the default name in both formats -
    in ONNX Runtime too, whose session optimizer would otherwise quantize the excluded layer again."""
    pixels = _plain_images(tmp_path, 600)
    model_path = tmp_path / "m.keras"
    _planted_classifier(model_path, pixels[:200])
    res = runner.invoke(app, [str(tmp_path / "no-run"), "--model", str(model_path), "--data", str(tmp_path / "data"),
                              "--labels", "a,b", "--int8", "--calibration", "100", "--gate-extra",
                              str(tmp_path / "extra"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    for name in ("classifier-int8.tflite", "classifier-int8.onnx"):
        card = json.loads((tmp_path / "e" / f"{name}.json").read_text())
        assert card["recipe"].endswith("+mixed"), (name, card["recipe"])
        full = [r for r in card["recipes_tried"] if "selection_agreement" in r and not r["recipe"].endswith("+mixed")]
        assert full and all(r["selection_agreement"] < 0.7 for r in full), full
        mixed = card["mixed"]
        assert mixed["ranking"][0]["layer"].startswith("planted")
        assert mixed["float_layers"][0].startswith("planted") and len(mixed["float_layers"]) <= 2
        assert card["int8_mac_share"] >= 0.8 and card["verification"]["agreement"] >= 0.99
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(tmp_path / "e" / "classifier-int8.onnx")).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    q_in = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    # pixels are integers 0-255 whatever the calibration images held: quantized exactly
    assert q_in and float(init[q_in[0].input[1]]) == 1.0 and int(init[q_in[0].input[2]]) == 0


def _noisy_tensor_classifier(path, pixels, size=32):
    """A classifier whose int8 error is one activation tensor's grid, not any layer's weights: the linear
    projection ``proj`` (BatchNorm, no activation) carries on channel 0 a constant 1e5 that the next
    convolution gives zero weight. The float model ignores it; per-tensor int8 sets the tensor's step
    to ~400 by it (stream equalization, 16x at most, cannot undo that), and the other channels (about +-3)
    round to nothing. Keeping ``proj`` or its reader in float alone leaves the tensor on that grid; only
    both together (a region) take it off."""
    keras, inp, x = _stem(size, 5)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="proj")(x)
    x = keras.layers.BatchNormalization(name="proj_BN")(x)
    x = keras.layers.Conv2D(16, 1, use_bias=False, name="c2")(x)
    x = keras.layers.BatchNormalization(name="c2_BN")(x)
    x = keras.layers.ReLU(6.0, name="c2_relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="c3")(x)  # the bulk of the MACs
    x = keras.layers.BatchNormalization(name="c3_BN")(x)
    x = keras.layers.ReLU(6.0, name="c3_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="target_head")(x)
    model = keras.Model(inp, out, name="classifier")
    for name in ("c0_BN", "proj_BN", "c2_BN", "c3_BN"):  # the images' own statistics, unit variance
        bn = model.get_layer(name)
        a = np.asarray(keras.Model(inp, bn.input)(pixels.astype(np.float32)))
        bn.moving_mean.assign(a.mean((0, 1, 2)))
        bn.moving_variance.assign(a.var((0, 1, 2)) + 1e-3)
        if name != "proj_BN":
            bn.beta.assign(np.full(bn.beta.shape, 1.0, np.float32))
    proj = model.get_layer("proj_BN")
    g, b = proj.gamma.numpy(), proj.beta.numpy()
    g[0], b[0] = 0.0, 1.0e5
    proj.gamma.assign(g)
    proj.beta.assign(b)
    c2 = model.get_layer("c2")
    k = c2.kernel.numpy()
    k[:, :, 0, :] = 0.0
    c2.kernel.assign(k)
    _decisive_head(model, pixels)
    model.save(path)
    return model


def test_noise_measure_ranks_the_planted_tensor_first_with_its_region(tmp_path):
    from mstl.export.noise import measure
    pixels = _plain_images(tmp_path, 400)
    model = _noisy_tensor_classifier(tmp_path / "m.keras", pixels[:200])
    ref = np.asarray(model.predict(pixels[200:], verbose=0))
    noise = measure(model, pixels[:200], pixels[200:], ref)
    assert noise[0].tensor == "proj_BN" and noise[0].share > 0.9, noise[:3]
    assert noise[0].units == ("proj", "c2")
    assert sum(n.share for n in noise) == pytest.approx(1.0)
    by = {n.tensor: n.units for n in noise}
    assert by["input"] == ("scaling", "c0") and by["c3_relu"] == ("c3", "pool") and by["logits"] == ("target_head",)


def test_a_planted_noisy_tensor_is_taken_off_the_int8_grid(tmp_path):
    """Every full-int8 rung fails; the mixed rung keeps the tensor's maker and reader in float together
    and ships under the default name in both formats with >= 80% of the MACs in int8."""
    pixels = _plain_images(tmp_path, 600)
    _noisy_tensor_classifier(tmp_path / "m.keras", pixels[:200])
    res = runner.invoke(app, [str(tmp_path / "no-run"), "--model", str(tmp_path / "m.keras"), "--data",
                              str(tmp_path / "data"), "--labels", "a,b", "--int8", "--calibration", "100",
                              "--gate-extra", str(tmp_path / "extra"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    for name in ("classifier-int8.tflite", "classifier-int8.onnx"):
        card = json.loads((tmp_path / "e" / f"{name}.json").read_text())
        full = [r for r in card["recipes_tried"] if "selection_agreement" in r and not r["recipe"].endswith("+mixed")]
        assert full and all(r["selection_agreement"] < 0.9 for r in full), full
        assert card["recipe"].endswith("+mixed"), (name, card["recipe"])
        mixed = card["mixed"]
        assert "proj_BN" in mixed["float_layers"], mixed["float_layers"]
        region = next(r for r in mixed["ranking"] if r["layer"] == "proj_BN" and r["kind"] == "region")
        assert len(region["nodes"]) >= 2
        assert card["int8_mac_share"] >= 0.8 and card["verification"]["agreement"] >= 0.99


def test_regions_share_ops_and_are_costed_once():
    """A block's projection and the addition after it both need the next expansion in float: once the
    first region is kept, the second costs only what it adds; a region whose layer the graph does not
    show is left out; the search's int8 share counts a shared node once."""
    from mstl.export.mixed import regions
    from mstl.export.noise import Noise
    node_macs = {"proj": 100, "expand": 300, "add": 0, "dw": 20, "rest": 9580}
    unit_nodes = {"p": ("proj",), "e": ("expand",), "a": ("add",), "d": ("dw",)}
    noise = [Noise("proj_BN", 0.4, ("p", "e")), Noise("add_out", 0.3, ("a", "e")),
             Noise("relu", 0.2, ("d",)), Noise("unknown", 0.1, ("x",))]
    ranked = regions(noise, unit_nodes, node_macs)
    assert [c.name for c in ranked] == ["relu", "proj_BN", "add_out"]
    assert [c.macs for c in ranked] == [20, 400, 0]
    assert ranked[2].float_nodes == ("add", "expand") and ranked[2].kind == "region"
    found = fewest_float(ranked, node_macs, lambda names: {"passes": len(names) >= 4, "agreement": 0.9})
    assert found["float_nodes"] == ["dw", "proj", "expand", "add"]
    assert found["chosen"]["int8_mac_share"] == pytest.approx(1 - 420 / 10000)


def test_a_build_that_flips_nothing_by_luck_does_not_pass_selection():
    """Margin errors of +-0.2 that happen to fall where they flip nothing (away from the boundary on the
    images near it, toward it only on those beyond 0.2) give 100% measured agreement; the agreement the same
    errors predict for every image is lower, and the gate's selection does not pass on luck."""
    from mstl.export.gate import expected_agreement
    rng = np.random.default_rng(1)
    p1 = rng.uniform(0.5, 1.0, 1000)
    ref = np.stack([p1, 1 - p1], 1)
    margin = 2 * p1 - 1
    toward = (margin > 0.2) & (rng.random(1000) < 0.5)  # only where a 0.2 move cannot flip
    shift = np.where(toward, -0.1, 0.1)  # the margin moves by twice the shift
    lucky = np.stack([p1 + shift, 1 - p1 - shift], 1)
    assert top1_agreement_of(lucky, ref) == 1.0
    assert expected_agreement(lucky, ref) < 0.99
    g = Gate.build(np.zeros((1000, 1)), ref, None, np.zeros(1000, bool))
    c = g.choose(lucky[g.selection], 0.99)
    assert c["agreement"] == 1.0 and c["expected_agreement"] < 0.99 and not c["passes"]
    assert expected_agreement(ref, ref) == 1.0


def top1_agreement_of(probs, ref):
    from mstl.edge.core.metrics import top1_agreement
    return top1_agreement(probs, ref)["agreement"]


@pytest.mark.parametrize("one, two, chosen", [
    # measured 99.85% by luck (3 flips), its errors predict 99.70%; the other flipped 7 but predicts 99.80%
    ((0.9985, 0.9970), (0.9965, 0.9980), 2),
    # the lucky one's prediction (99.0%) is worse than the other's measured and predicted figures
    ((0.998, 0.990), (0.995, 0.994), 2),
    # 20 measured flips where 4 were predicted: the prediction missed something, the count stands
    ((0.9985, 0.9970), (0.990, 0.998), 1),
    # predictions a tenth of a flip apart: the count (6 against 14) decides
    ((0.9968, 0.99591), (0.9930, 0.99596), 1),
])
def test_when_nothing_passes_the_surest_step_goes_to_confirmation(one, two, chosen):
    """Steps that did not pass are ranked by their flips estimated from the measured count and the
    prediction together, weighted by their variances (2,000 selection images, prediction +- 0.7 flips),
    unless the count is far over the prediction."""
    def attempt(names):
        measured, expected = one if len(names) == 1 else two
        return {"passes": False, "agreement": measured, "expected_agreement": expected,
                "expected_agreement_se": 0.7 / 2000, "n_compared": 2000}
    found = fewest_float(_cands(2), _macs(2), attempt)
    assert found["chosen"]["float_candidates"] == chosen


def test_the_predicted_flips_standard_error_is_the_pools_spread():
    """expected_flips' standard error shrinks with the pool as 1/sqrt(n) and is zero for a build whose
    every error is the same."""
    from mstl.export.gate import expected_flips
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.5, 1.0, 3000)
    ref = np.stack([p1, 1 - p1], 1)
    shift = rng.normal(0, 0.02, 3000)
    noisy = np.stack([p1 - shift, 1 - p1 + shift], 1)
    flips, se, n = expected_flips(noisy, ref, pool=300)
    flips_big, se_big, _ = expected_flips(noisy, ref, pool=1200)
    assert n > 2500 and flips > 2 and 0 < se < flips
    assert se_big < se
    same = np.stack([p1 - 0.01, 1 - p1 + 0.01], 1)
    assert expected_flips(same, ref)[1] == 0.0
