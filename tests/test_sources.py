import os

import numpy as np
import pytest
from PIL import Image

from mstl.edge.core.sources import DataError, detect_layout, index_dataset, patient_id


def _img(path, value=128, size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def test_class_folders_and_skips(tmp_path):
    _img(tmp_path / "A" / "a1.png")
    _img(tmp_path / "A" / "a2.jpeg")
    _img(tmp_path / "B" / "b1.png")
    (tmp_path / "A" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "notes.txt").write_text("x")
    ix = index_dataset(tmp_path)
    assert ix.layout == "class-folders" and ix.classes == ["A", "B"] and ix.counts() == {"A": 2, "B": 1}
    reasons = {p.split("/")[-1]: r for p, r in [(s.path, s.reason) for s in ix.skipped]}
    assert ".DS_Store" in reasons and "notes.txt" in reasons


def test_split_folders_any_case_and_stray_files(tmp_path):
    _img(tmp_path / "TRAIN" / "CNV" / "CNV-123-1.jpeg")
    _img(tmp_path / "TRAIN" / "NORMAL" / "NORMAL-9-1.jpeg")
    _img(tmp_path / "Val" / "CNV" / "CNV-5-1.jpeg")
    (tmp_path / "TRAIN" / ".DS_Store").write_bytes(b"\0")
    ix = index_dataset(tmp_path)
    assert ix.layout == "split-folders"
    assert ix.split_counts() == {"train": {"CNV": 1, "NORMAL": 1}, "val": {"CNV": 1, "NORMAL": 0}}
    assert sorted(ix.patients) == ["123", "5", "9"]
    assert any(s.path.endswith("TRAIN/.DS_Store") for s in ix.skipped)


def test_covid_layout_reads_lung_part_only_and_ignores_masks(tmp_path):
    for part in ("Lung Segmentation Data", "Infection Segmentation Data"):
        for split in ("Train", "Test"):
            for cls in ("COVID-19", "Normal"):
                _img(tmp_path / part / split / cls / "images" / f"{cls}_1.png")
                _img(tmp_path / part / split / cls / "masks" / f"{cls}_1.png")
    ix = index_dataset(tmp_path)
    assert ix.layout == "covid-qu-ex"
    assert len(ix) == 4 and all("Lung Segmentation Data" in p for p in ix.paths)
    assert ix.ignored == 4 and not ix.skipped


def test_empty_class_folder_reported(tmp_path):
    _img(tmp_path / "A" / "a.png")
    (tmp_path / "B").mkdir()
    ix = index_dataset(tmp_path)
    assert any("empty class folder" in s.reason for s in ix.skipped)


def test_unknown_layout_and_missing_path(tmp_path):
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown layout"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        index_dataset(tmp_path / "nope")


def test_medmnist_npz(tmp_path):
    p = tmp_path / "octmnist.npz"
    rng = np.random.default_rng(0)
    np.savez(p, train_images=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), train_labels=np.arange(8).reshape(-1, 1) % 4,
             test_images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8), test_labels=np.zeros((4, 1), int))
    ix = index_dataset(p)
    assert ix.layout == "medmnist" and ix.classes == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert ix.split_counts()["test"]["CNV"] == 4
    from mstl.data.cache import build_cache
    c = build_cache(ix, 32, "bilinear", root=tmp_path / "c", quiet=True)
    assert c.images.shape == (12, 32, 32, 3) and c.ok.all()


def test_patient_ids():
    assert patient_id("CNV-6294785-1.jpeg") == "6294785"
    assert patient_id("person1_bacteria_1.jpeg") == "1"
    assert patient_id("NORMAL2-IM-0007-0001.jpeg") == "0007"
    assert patient_id("covid (1).png") is None


def test_image_cache_reports_unreadable_and_is_reused(tmp_path):
    _img(tmp_path / "d" / "A" / "ok.png")
    _img(tmp_path / "d" / "B" / "ok.png", 10)
    (tmp_path / "d" / "B" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    from mstl.data.cache import build_cache
    ix = index_dataset(tmp_path / "d")
    c = build_cache(ix, 16, "bilinear", root=tmp_path / "c", quiet=True)
    assert c.ok.tolist() == [True, False, True] and len(c.failures) == 1 and "bad.png" in c.failures[0].path
    again = build_cache(ix, 16, "bilinear", root=tmp_path / "c", quiet=True)
    assert again.path == c.path and np.array_equal(np.asarray(again.images), np.asarray(c.images))


def test_demo_data_layouts(demo_data):
    oct_ix, cxr_ix = index_dataset(demo_data["oct"]), index_dataset(demo_data["cxr"])
    assert oct_ix.layout == "split-folders" and oct_ix.classes == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert oct_ix.patients_detected and not oct_ix.skipped
    assert cxr_ix.layout == "covid-qu-ex" and cxr_ix.classes == ["COVID-19", "Non-COVID", "Normal"]
    assert len(cxr_ix) == 60 and cxr_ix.ignored == 60


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_under_an_image_name_is_skipped_not_read(tmp_path):
    """Opening a FIFO to decode it waits for a writer forever: `mstl-train inspect` hung on one."""
    from PIL import Image
    from mstl.edge.core.sources import index_dataset
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / c / f"{i}.png")
    os.mkfifo(tmp_path / "b" / "pipe.png")
    index = index_dataset(tmp_path)
    assert len(index) == 4
    (skip,) = [s for s in index.skipped if s.path.endswith("pipe.png")]
    assert "not a regular file" in skip.reason


def test_target_images_that_are_bridge_images_are_found(tmp_path):
    """Same folder, a nested folder, or links: the target's test images would have trained stage 1."""
    from mstl.edge.core.sources import shared_images
    for c in ("a", "b"):
        for i in range(3):
            _img(tmp_path / "bridge" / c / f"{i}.png", value=10 * i + 1)
            _img(tmp_path / "target" / c / f"{i}.png", value=10 * i + 2)
    bridge, target = index_dataset(tmp_path / "bridge"), index_dataset(tmp_path / "target")
    assert shared_images(bridge, target) == []
    assert len(shared_images(bridge, index_dataset(tmp_path / "bridge"))) == 6
    linked = tmp_path / "linked"
    for c in ("a", "b"):
        (linked / c).mkdir(parents=True)
        (linked / c / "x.png").symlink_to(tmp_path / "bridge" / c / "0.png")
        os.link(tmp_path / "target" / c / "1.png", linked / c / "y.png")
    found = shared_images(bridge, index_dataset(linked))
    assert [os.path.basename(p) for p in found] == ["x.png", "x.png"]


def test_full_run_with_overlapping_bridge_and_target_is_refused_before_decoding(tmp_path):
    from typer.testing import CliRunner
    from mstl.cli.train import app
    for c in ("COVID-19", "Normal"):
        for i in range(6):
            _img(tmp_path / "xray" / c / f"{i}.png", value=20 * i)
    res = CliRunner().invoke(app, ["full", "--preset", "smoke", "--bridge", str(tmp_path / "xray"),
                                   "--target", str(tmp_path / "xray"), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and "12 target image(s) are also bridge images" in res.output, res.output
    assert "Traceback" not in res.output
