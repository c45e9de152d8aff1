import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mstl.cli.export import app
from mstl.edge.core.formats import FORMATS, by_key, select

pytestmark = pytest.mark.slow
runner = CliRunner()


def _manifest(exports):
    return json.loads((exports / "manifest.json").read_text())


def test_manifest_complete_and_all_verified(smoke_exports):
    """Every format passed a gate that means something: a Keras reference that is not nearly constant,
    more confirmation images than a provisional verdict has, every one of them accounted for (compared or
    a near-tie), and the close-to-noise warning exactly where a few flips would cross the threshold."""
    from mstl.export.gate import PROVISIONAL_BELOW
    from mstl.edge.core.agreement import MIN_DECISIVE_FLIPS
    m = _manifest(smoke_exports)
    assert {a["key"] for a in m["artifacts"]} == {f.key for f in FORMATS}
    gate = m["gate"]
    assert gate["selection_images"] + gate["confirmation_images"] == m["verification_images"]
    assert gate["confirmation_images"] >= PROVISIONAL_BELOW
    for a in m["artifacts"]:
        assert a["status"] == "ok" and (smoke_exports / a["path"]).is_file(), a
        assert a["size_bytes"] == (smoke_exports / a["path"]).stat().st_size
        v = json.loads((smoke_exports / (a["path"] + ".json")).read_text())["verification"]
        assert v["reference_nearly_constant"] is False and not v["provisional"], a["name"]
        assert v["n_compared"] + v["n_near_ties"] == v["n_images"] == gate["confirmation_images"]
        assert a["n_compared"] == v["n_compared"] >= PROVISIONAL_BELOW and a["agreement"] >= v["threshold"]
        assert a["flips"] == round((1 - a["agreement"]) * a["n_compared"])
        assert v["threshold"] == by_key(a["key"]).min_agreement
        noisy = a["n_compared"] * (1 - v["threshold"]) < MIN_DECISIVE_FLIPS
        assert ("close to noise" in a.get("warning", "")) == noisy, (a["name"], a.get("warning"))
        assert "nearly constant" not in a.get("warning", "")
        assert a["heldout"]["n"] == m["heldout_images"] > 0
    assert (smoke_exports / "labels.txt").read_text().split() == ["not", "COVID-19", "COVID-19"]


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.key for f in FORMATS])
def test_artifact_loads_with_claimed_types_and_card(smoke_exports, fmt):
    from mstl.edge.core.runtimes import load_runtime
    path = smoke_exports / fmt.filename("classifier")
    rt = load_runtime(path)
    card = json.loads((smoke_exports / (path.name + ".json")).read_text())
    for k in ("labels", "input", "output", "sha256", "size_bytes", "intended_use", "data_licence", "verification", "source"):
        assert k in card, k
    assert card["input"]["resize"]["method"] == "bilinear" and card["input"]["shape"][1] == rt.image_size
    assert str(rt.input_dtype) == card["input"]["dtype"]
    embedded = fmt.load_module().read_metadata(path)
    assert embedded["labels"] == card["labels"] and embedded["input"]["dtype"] == card["input"]["dtype"]
    if fmt.key == "tflite-int8":
        from mstl.export.tflite import tensor_types
        assert {"INT8"} <= tensor_types(path) and str(rt.input_dtype) == "uint8"
        assert card["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}  # raw pixels directly
    if fmt.key == "onnx-int8":
        from mstl.export.onnx import op_types
        assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(path)
    if fmt.precision == "fp32":
        assert str(rt.input_dtype) == "float32" and card["input"]["range"] == [0.0, 255.0]
    probs = rt.predict(np.full((2, rt.image_size, rt.image_size, 3), 128, np.uint8))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=0.02)


def test_gate_fails_on_broken_artifact(smoke_run, tmp_path, monkeypatch):
    import mstl.export.tflite as tfl
    real = tfl.build_fp32

    def broken(model, workdir, opts):
        from mstl.tf_env import keras
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        head = clone.layers[-1]
        k, b = head.get_weights()
        head.set_weights([k[:, ::-1], b[::-1]])  # swap the classes
        return real(clone, workdir)

    monkeypatch.setattr(tfl, "build_fp32", broken)
    out = tmp_path / "broken"
    res = runner.invoke(app, [str(smoke_run), "--format", "tflite", "--out", str(out)])
    assert res.exit_code == 2
    assert "below the 99.9% threshold" in res.output
    art = {a["key"]: a for a in _manifest(out)["artifacts"]}
    assert art["tflite-fp32"]["status"] == "failed"


def test_argument_checks(smoke_run, tmp_path):
    res = runner.invoke(app, [str(smoke_run), "--format", "onnx", "--fp16"])
    assert res.exit_code == 2 and "--fp16 applies to tflite" in res.output
    res = runner.invoke(app, [str(smoke_run), "--io", "int8"])
    assert res.exit_code == 2 and "--io is only accepted by tflite-int8" in res.output
    res = runner.invoke(app, [str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such run directory" in res.output
    res = runner.invoke(app, [str(smoke_run), "--format", "coreml"])
    assert res.exit_code == 2 and "unknown format" in res.output
    # 0 used to mean the default 200 calibration images, and a threshold of 2 failed every artifact
    for flags, words in ((["--int8", "--calibration", "0"], "--calibration must be 1 or more"),
                         (["--min-int8", "2"], "--min-int8 is a fraction from 0 to 1"),
                         (["--min-float", "nan"], "--min-float is a fraction from 0 to 1")):
        res = runner.invoke(app, [str(smoke_run), "--out", str(tmp_path / "x"), *flags])
        assert res.exit_code == 2 and words in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_not_a_classifier(tmp_path, demo_data):
    from mstl.tf_env import keras
    m = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    m.save(tmp_path / "reg.keras")
    res = runner.invoke(app, [str(tmp_path), "--model", str(tmp_path / "reg.keras"), "--data", str(demo_data["oct"])])
    assert res.exit_code == 2 and "not a classifier" in res.output


def test_select_table():
    keys = [f.key for f in select(["tflite", "onnx"], {"int8"})]
    assert keys == ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"]
    assert [f.key for f in select(["onnx"], set())] == ["onnx-fp32"]


def test_formats_and_runtimes_import_without_tensorflow():
    code = "import sys, mstl.edge.core.formats, mstl.edge.core.runtimes; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _job_seen(monkeypatch, tmp_path, *flags):
    """What mstl-export hands the export for these flags (the formats and the thresholds), without exporting."""
    from types import SimpleNamespace
    from mstl.export import run as export_run
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text("{}")
    seen = {}

    def job_from_run(run_dir, formats, out, model, calibration, io, thresholds, *rest):
        seen.update(formats=[f.key for f in formats], thresholds=thresholds, calibration=calibration, io=io)
        return SimpleNamespace(out_dir=tmp_path / "ex")

    monkeypatch.setattr(export_run, "job_from_run", job_from_run)
    monkeypatch.setattr(export_run, "run_export", lambda job: {"artifacts": []})
    res = runner.invoke(app, [str(run), *flags])
    assert res.exit_code == 0, res.output
    return seen


def test_export_flags_reach_the_gate_and_select_their_formats(monkeypatch, tmp_path):
    """A threshold flag moves its own precisions' gate and no other; each format flag adds exactly its
    format to the fp32 references; a threshold for a precision the table has not is refused."""
    from mstl.edge.core.formats import thresholds
    table = {f.precision: f.min_agreement for f in FORMATS}
    assert _job_seen(monkeypatch, tmp_path)["thresholds"] == table
    assert _job_seen(monkeypatch, tmp_path, "--min-int8", "0.97")["thresholds"] == {**table, "int8": 0.97}
    assert _job_seen(monkeypatch, tmp_path, "--min-float", "0.9")["thresholds"] == {**table, "fp32": 0.9, "fp16": 0.9}
    refs = ["tflite-fp32", "onnx-fp32"]
    assert _job_seen(monkeypatch, tmp_path)["formats"] == refs
    for flag in sorted({f.flag for f in FORMATS if f.flag}):
        added = {f.key for f in FORMATS if f.flag == flag}
        keys = _job_seen(monkeypatch, tmp_path, f"--{flag}")["formats"]
        assert set(keys) == set(refs) | added and len(keys) == len(set(keys)), (flag, keys)
    assert _job_seen(monkeypatch, tmp_path, "--int8", "--format", "onnx")["formats"] == ["onnx-fp32", "onnx-int8"]
    seen = _job_seen(monkeypatch, tmp_path, "--int8", "--calibration", "7", "--io", "int8")
    assert (seen["calibration"], seen["io"]) == (7, "int8")
    with pytest.raises(ValueError, match="unknown precision.*int4"):
        thresholds({"int4": 0.9})


@pytest.mark.slow
def test_reexport_replaces_the_folder_whole(smoke_run, tmp_path):
    """Exporting fewer formats leaves no file of the earlier export beside the new manifest; a folder
    mstl did not make is refused."""
    out = tmp_path / "ex"
    assert runner.invoke(app, [str(smoke_run), "--format", "tflite,onnx", "--out", str(out)]).exit_code == 0
    assert (out / "classifier-fp32.onnx").exists()
    res = runner.invoke(app, [str(smoke_run), "--format", "tflite", "--out", str(out)])
    assert res.exit_code == 0, res.output
    listed = {a["path"] for a in _manifest(out)["artifacts"]}
    on_disk = {p.name for p in out.iterdir() if p.suffix in (".tflite", ".onnx")}
    assert listed == on_disk == {"classifier-fp32.tflite"}
    assert not list(tmp_path.glob(".ex.*"))  # no staging or old folder left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.pdf").write_bytes(b"%PDF")
    res = runner.invoke(app, [str(smoke_run), "--format", "tflite", "--out", str(foreign)])
    assert res.exit_code == 2 and "holds no mstl manifest.json" in res.output and (foreign / "thesis.pdf").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _folder(path, text):
    path.mkdir()
    (path / "manifest.json").write_text(text)
    return path


def test_a_kill_while_swapping_exports_folders_is_repaired(tmp_path):
    """An export killed between moving the old folder aside and moving the new one in used to leave no
    exports folder at all; the next export puts the old one back and drops the half-written one."""
    from mstl.export.run import _recover_leftovers
    final, pid = tmp_path / "exports", _dead_pid()
    _folder(tmp_path / f".exports.old-{pid}", "old")
    _folder(tmp_path / f".exports.staging-{pid}", "half")
    said = _recover_leftovers(final)
    assert (final / "manifest.json").read_text() == "old" and len(said) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]
    # a folder of a process still running is not touched
    busy = _folder(tmp_path / f".exports.staging-{subprocess.os.getppid()}", "busy")
    assert _recover_leftovers(final) == [] and busy.exists()


def test_exports_folders_swap_whole(tmp_path):
    from mstl.export.run import _swap_in
    final = _folder(tmp_path / "exports", "old")
    (final / "stale.onnx").write_bytes(b"x")
    staging = _folder(tmp_path / ".exports.staging-1", "new")
    _swap_in(staging, final)
    assert [p.name for p in final.iterdir()] == ["manifest.json"] and (final / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]
