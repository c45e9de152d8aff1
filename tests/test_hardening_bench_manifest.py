"""The exports manifest's sha256 travels with each Artifact (issue 22): collect reads a folder's manifest
once, and a card-less artifact is checked against what it read - replaced files are still refused."""

import hashlib
import json

import pytest

from mstl.edge.bench import run as bench_run
from mstl.edge.bench.run import _manifest_mismatch, collect, run_bench


def _exports(folder, names=("classifier-fp32.tflite", "classifier-int8.tflite")):
    """An exports folder of fake artifact files, each listed in its manifest with its sha256."""
    rows = []
    for name in names:
        (folder / name).write_bytes(name.encode())
        rows.append({"name": name, "path": name, "format": "tflite", "sha256": hashlib.sha256(name.encode()).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps({"artifacts": rows}))
    return [folder / n for n in names]


def test_a_folder_gives_each_artifact_its_listed_sha256(tmp_path):
    fp32, int8 = _exports(tmp_path)
    a, b = collect([tmp_path])
    assert a.listed_sha256 == hashlib.sha256(fp32.name.encode()).hexdigest()
    assert b.listed_sha256 == hashlib.sha256(int8.name.encode()).hexdigest()
    assert _manifest_mismatch(a) is None and _manifest_mismatch(b) is None
    int8.write_bytes(b"another build")
    assert "not the file manifest.json lists (sha256 differs)" in _manifest_mismatch(b)


def test_files_of_one_folder_read_its_manifest_once(tmp_path, monkeypatch):
    files = _exports(tmp_path)
    reads = []
    real = bench_run.read_manifest
    monkeypatch.setattr(bench_run, "read_manifest", lambda folder: reads.append(folder) or real(folder))
    artifacts = collect(files)
    assert reads == [tmp_path]
    assert [a.listed_sha256 for a in artifacts] == [hashlib.sha256(f.name.encode()).hexdigest() for f in files]


def test_a_file_not_in_its_manifest_or_without_one_is_not_refused(tmp_path):
    (fp32,) = _exports(tmp_path, ("classifier-fp32.tflite",))
    stray = tmp_path / "other.tflite"
    stray.write_bytes(b"x")
    lone_dir = tmp_path / "lone"
    lone_dir.mkdir()
    lone = lone_dir / "classifier.onnx"
    lone.write_bytes(b"y")
    for a in collect([stray, lone]):
        assert a.listed_sha256 is None and a.manifest_error is None and _manifest_mismatch(a) is None


def test_a_broken_manifest_beside_a_file_is_named(tmp_path):
    f = tmp_path / "classifier.tflite"
    f.write_bytes(b"x")
    (tmp_path / "manifest.json").write_text("{not json")
    (a,) = collect([f])
    problem = _manifest_mismatch(a)
    assert problem.startswith("classifier.tflite has no card and cannot be checked against its manifest: ")
    assert "manifest.json" in problem and "\n" not in problem


@pytest.mark.parametrize("given", ["folder", "files"])
def test_the_bench_refuses_a_replaced_card_less_artifact_unmeasured(tmp_path, given):
    fp32, int8 = _exports(tmp_path)
    int8.write_bytes(b"replaced after export")
    int8.with_name(int8.name + ".json").unlink(missing_ok=True)
    fp32.write_bytes(b"also replaced")
    report = run_bench([tmp_path] if given == "folder" else [fp32, int8], None, [1], 1, 0)
    assert [r["status"] for r in report["results"]] == ["failed", "failed"]
    assert all("sha256 differs" in r["error"] for r in report["results"])
