"""Exports manifests and model cards that are not what mstl wrote: one line naming the file and the fix,
in every reader (the bench, the app, the verification bundle) - never a KeyError or a bare "Expecting value"."""

import json

import pytest
from typer.testing import CliRunner

from mstl.edge.core.cards import CardError, card_of, read_manifest
from mstl.cli.bench import app as bench_app

runner = CliRunner()

BAD_MANIFESTS = {
    "empty object": {},
    "a list": [],
    "artifacts not a list": {"artifacts": {"a": 1}},
    "entry without format": {"artifacts": [{"name": "classifier.onnx", "path": "classifier.onnx", "precision": "fp32"}]},
    "entry not an object": {"artifacts": ["classifier.onnx"]},
    "entry outside the folder": {"artifacts": [{"path": "../../etc/passwd", "format": "onnx"}]},
    "source not an object": {"artifacts": [], "source": "runs/x"},
}


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_named_with_its_fix(tmp_path, kind):
    (tmp_path / "manifest.json").write_text(json.dumps(BAD_MANIFESTS[kind]))
    with pytest.raises(CardError) as e:
        read_manifest(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "manifest.json") in msg and "re-export" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", ["empty object", "a list", "entry without format"])
def test_bench_on_a_bad_manifest_says_one_line(tmp_path, kind):
    (tmp_path / "manifest.json").write_text(json.dumps(BAD_MANIFESTS[kind]))
    res = runner.invoke(bench_app, [str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "manifest.json" in res.output and "Traceback" not in res.output
    assert not isinstance(res.exception, (KeyError, AttributeError, TypeError))


def test_manifest_that_is_not_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    res = runner.invoke(bench_app, [str(tmp_path)])
    assert res.exit_code == 2 and "manifest.json" in res.output and "not JSON" in res.output


@pytest.mark.parametrize("text", ["", "not json at all", "[1, 2]", '{"source": "x"}', '{"labels": "a,b"}',
                                  '{"verification": "ok"}', '{"input": {"shape": [1, 150]}}',
                                  '{"input": {"shape": "150x150"}}', '{"input": {"shape": [1, 150, 160, 3]}}'])
def test_card_that_is_not_a_card_is_named(tmp_path, text):
    art = tmp_path / "classifier-int8.onnx"
    art.write_bytes(b"onnx")
    (tmp_path / "classifier-int8.onnx.json").write_text(text)
    with pytest.raises(CardError) as e:
        card_of(art)
    assert "classifier-int8.onnx.json" in str(e.value) and "re-export" in str(e.value)
    res = runner.invoke(bench_app, [str(art)])
    assert res.exit_code == 2 and "classifier-int8.onnx.json" in res.output and "Traceback" not in res.output


def test_card_absent_is_still_none(tmp_path):
    art = tmp_path / "classifier.onnx"
    art.write_bytes(b"onnx")
    assert card_of(art) is None
    (tmp_path / "classifier.onnx.json").write_text('{"format": "onnx", "labels": ["a", "b"]}')
    assert card_of(art)["labels"] == ["a", "b"]


def test_the_app_names_a_broken_card(tmp_path):
    pytest.importorskip("PIL")
    from mstl.edge.app.inference import Classifier
    art = tmp_path / "classifier-int8.tflite"
    art.write_bytes(b"tflite")
    (tmp_path / "classifier-int8.tflite.json").write_text("Expecting value")
    with pytest.raises(CardError, match="classifier-int8.tflite.json: the model card is not JSON"):
        Classifier(art)


def test_the_bundle_names_a_broken_manifest(tmp_path):
    from mstl.edge.core.bundle import FOLDER, INDEX, BundleError, read
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / INDEX).write_text("{}")
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(BundleError, match="manifest.json"):
        read(tmp_path)


def test_a_manifest_without_precision_is_read_from_the_name(tmp_path):
    from mstl.edge.bench.run import collect
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{"path": "classifier-int8.onnx", "format": "onnx"}]}))
    (a,) = collect([tmp_path])
    assert a.format == "onnx" and a.precision == "int8"
