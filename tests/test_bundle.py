"""The verification bundle: exports carry held-out images and the Keras model's answers, so that the
bench on any device checks each artifact against what the exporting machine verified."""

import json
import shutil

import numpy as np
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
        assert not b["disagrees"] and not any("DISAGREES" in n for n in r.get("notes", [])), (r["artifact"], b)
        # the same file on the same CPU: the exporting machine's answers, image by image, int8 included
        v = b["vs_export"]
        assert v["changed"] == 0 and v["n_compared"] > 0 and v["max_abs_diff"] < 1e-4, (r["artifact"], v)
        assert sorted(index["answers"]) == sorted(index["artifacts"])
        if r["precision"] == "fp32":
            assert b["agreement"] == 1.0 and b["max_abs_diff"] < 1e-3, (r["artifact"], b)


def test_flips_on_a_small_bundle_are_judged_as_a_count_not_against_the_threshold():
    from mstl.edge.core.metrics import flips_p_value
    assert flips_p_value(0, 100, 0.01) == 1.0
    assert abs(flips_p_value(2, 100, 0.01) - (1 - 0.99 ** 100 - 100 * 0.01 * 0.99 ** 99)) < 1e-12  # 0.264
    assert flips_p_value(6, 100, 0.01) < 0.001 < flips_p_value(4, 100, 0.01) < 0.02
    assert flips_p_value(1, 100, 0.0) == 0.0


def _bench_row(flipped: int, changed: int) -> dict:
    """A bench row against a 100-image bundle whose reference is decisive: ``flipped`` answers away from
    Keras on this device, of which ``changed`` also differ from the exporting machine's."""
    from mstl.edge.bench.run import _against_bundle
    ref = np.tile([[0.9, 0.1]], (100, 1))
    here, there = ref.copy(), ref.copy()
    here[:flipped] = [0.2, 0.8]
    there[:flipped - changed] = [0.2, 0.8]
    bundle = {"artifacts": {"m.tflite": "abc"}, "reference_array": ref, "answers_arrays": {"m.tflite": there}}
    row = {"artifact": "m.tflite", "probs": here}
    _against_bundle(row, bundle, {"sha256": "abc", "verification": {"threshold": 0.99}})
    return row


def test_two_flips_in_a_hundred_are_not_a_disagreement_but_six_are():
    quiet, loud = _bench_row(2, 0), _bench_row(6, 0)
    assert quiet["bundle_agreement"]["agreement"] == 0.98 and not quiet["bundle_agreement"]["disagrees"]
    assert not quiet.get("notes")
    assert loud["bundle_agreement"]["disagrees"]
    assert any(n.startswith("DISAGREES with the export: 6 flips of 100") for n in loud["notes"])


def test_answers_that_differ_from_the_exporting_machines_are_named_exactly():
    row = _bench_row(2, 1)
    v = row["bundle_agreement"]["vs_export"]
    assert (v["changed"], v["export_flips"], v["n_compared"]) == (1, 1, 100)
    assert any(n.startswith("computes differently from the exporting machine: 1 of 100 top-1 answers changed")
               for n in row["notes"]) and not row["bundle_agreement"]["disagrees"]


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
