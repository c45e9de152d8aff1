"""The verification bundle: exports carry held-out images and the Keras model's answers, so that the
bench on any device checks each artifact against what the exporting machine verified."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from mstl.edge.bench.run import BenchError, run_bench
from mstl.cli.export import app as export_app

runner = CliRunner()


@pytest.fixture()
def copied(smoke_exports, tmp_path):
    """The exports folder alone, as a user copies it to a board (no run directory beside it)."""
    dest = tmp_path / "on-the-pi" / "exports"
    shutil.copytree(smoke_exports, dest)
    return dest


def test_the_bench_checks_every_artifact_against_the_bundle_on_its_own(copied):
    manifest = json.loads((copied / "manifest.json").read_text())
    index = json.loads((copied / "bundle" / "bundle.json").read_text())
    assert manifest["bundle"]["images"] == len(index["images"]) > 0
    assert {e["label"] for e in index["images"]} == {0, 1}  # stratified: both classes
    report = run_bench([copied], None, [1], 3, 1)
    assert "verification bundle" in report["data"] and report["n_images"] == len(index["images"])
    rows = [r for r in report["results"] if r["status"] == "ok"]
    assert len(rows) == len(manifest["artifacts"])
    for r in rows:
        b = r["bundle_agreement"]
        assert b["same_build"] and r["accuracy"] is not None, r["artifact"]
        assert b["agreement"] >= b["threshold"], (r["artifact"], b)
        if r["precision"] == "fp32":  # the same computation on the same CPU: the same answers
            assert b["agreement"] == 1.0 and b["max_abs_diff"] < 1e-3, (r["artifact"], b)


def test_a_changed_image_or_index_is_refused_by_sha256(copied):
    image = sorted((copied / "bundle" / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(BenchError, match="sha256 differs from bundle.json"):
        run_bench([copied], None, [1], 1, 0)
    index = copied / "bundle" / "bundle.json"
    image.write_bytes(image.read_bytes()[:-1])
    data = json.loads(index.read_text())
    data["images"][0]["reference"] = data["images"][0]["reference"][::-1]  # forge an answer
    index.write_text(json.dumps(data))
    with pytest.raises(BenchError, match="differs from the one in manifest.json"):
        run_bench([copied], None, [1], 1, 0)


def test_bundle_samples_sets_how_many_images_leave_with_the_exports(smoke_run, tmp_path):
    none, five = tmp_path / "none", tmp_path / "five"
    res = runner.invoke(export_app, [str(smoke_run), "--format", "onnx", "--bundle-samples", "0", "--out", str(none)])
    assert res.exit_code == 0, res.output
    assert not (none / "bundle").exists() and "bundle" not in json.loads((none / "manifest.json").read_text())
    assert not [p for p in none.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    res = runner.invoke(export_app, [str(smoke_run), "--format", "onnx", "--bundle-samples", "5", "--out", str(five)])
    assert res.exit_code == 0, res.output
    index = json.loads((five / "bundle" / "bundle.json").read_text())
    assert len(index["images"]) == 5 and len(list((five / "bundle" / "images").iterdir())) == 5
    assert index["artifacts"] == {"classifier-fp32.onnx": json.loads((five / "manifest.json").read_text())
                                  ["artifacts"][0]["sha256"]}
    res = runner.invoke(export_app, [str(smoke_run), "--format", "onnx", "--bundle-samples", "-1", "--out", str(five)])
    assert res.exit_code != 0 and "--bundle-samples must be 0 or more" in res.output


def test_an_artifact_without_its_card_is_unverified_and_a_replaced_one_is_refused(copied):
    """Issue 23: a missing card is not a pass. Without the card the manifest's sha256 still binds the file."""
    from mstl.edge.bench.report import recommendations
    fp32, int8 = copied / "classifier-fp32.tflite", copied / "classifier-int8.tflite"
    (copied / "classifier-int8.tflite.json").unlink()
    report = run_bench([fp32, int8], None, [1], 3, 1)
    row = next(r for r in report["results"] if r["artifact"] == int8.name)
    assert row["status"] == "ok" and row["verified"] is False
    assert any(n.startswith("NOT VERIFIED: classifier-int8.tflite has no model card") for n in row["notes"])
    (line,) = recommendations(report)
    assert "deploy classifier-fp32.tflite" in line and "no verified quantized form" in line
    shutil.copyfile(fp32, int8)  # another file under the int8 name, still without a card
    report = run_bench([fp32, int8], None, [1], 1, 0)
    row = next(r for r in report["results"] if r["artifact"] == int8.name)
    assert row["status"] == "failed" and "not the file manifest.json lists (sha256 differs)" in row["error"]
