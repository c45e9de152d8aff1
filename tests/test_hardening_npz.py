"""MedMNIST .npz files that are not what indexing assumes (issue 23, item 10): refused where the file is
indexed and where it is read (the image cache, image lists), with one line naming the file, the array
and the fix - never BadZipFile, MemoryError or an IndexError in the middle of training."""

import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from mstl.cli.train import app
from mstl.edge.core.sources import DataError, index_dataset

runner = CliRunner()
IMAGES = np.zeros((10, 28, 28), np.uint8)
LABELS = (np.arange(10) % 2).reshape(-1, 1)


def _not_a_zip(p):
    p.write_bytes(b"this is not a zip archive at all")


def _truncated(p):
    np.savez(p, train_images=IMAGES, train_labels=LABELS)
    p.write_bytes(p.read_bytes()[:300])


def _save(**arrays):
    return lambda p: np.savez(p, **arrays)


def _lying_header(p):
    """The .npy header of train_images declares a billion images; the data holds ten."""
    import io
    np.savez(p, train_images=IMAGES, train_labels=LABELS)
    with zipfile.ZipFile(p) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    raw = io.BytesIO(members["train_images.npy"])
    np.lib.format.read_array_header_1_0(raw) if np.lib.format.read_magic(raw) == (1, 0) else None
    data = raw.read()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (1_000_000_000, 28, 28)})
    members["train_images.npy"] = header.getvalue() + data
    with zipfile.ZipFile(p, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)


BAD = {
    "not a zip": (_not_a_zip, ["not a zip archive", "download it again"]),
    "truncated zip": (_truncated, ["download it again"]),
    "label 2e9": (_save(train_images=IMAGES, train_labels=np.array([[0]] * 9 + [[2_000_000_000]])),
                  ["train_labels", "class number 2,000,000,000", "fix the file's labels"]),
    "10 images, 40 labels": (_save(train_images=IMAGES, train_labels=np.zeros((40, 1), int)),
                             ["train_images holds 10 images but train_labels 40 labels", "fix the file"]),
    "flat 1-D images": (_save(train_images=np.zeros((10, 784), np.uint8), train_labels=LABELS),
                        ["train_images has shape (10, 784)", "reshape flat rows to (N, H, W)"]),
    "float images": (_save(train_images=np.zeros((10, 28, 28), np.float32), train_labels=LABELS),
                     ["train_images is float32", "astype(np.uint8)"]),
    "float labels": (_save(train_images=IMAGES, train_labels=LABELS.astype(float)),
                     ["train_labels is float64", "integer class numbers"]),
    "multi-label": (_save(train_images=IMAGES, train_labels=np.zeros((10, 14), int)),
                    ["train_labels has shape (10, 14)", "multi-label"]),
    "images without labels": (_save(train_images=IMAGES, train_labels=LABELS, val_images=IMAGES),
                              ["val_labels is missing"]),
    "a header that lies": (_lying_header, ["train_images declares (1000000000, 28, 28)", "download it again"]),
}


@pytest.fixture(params=list(BAD))
def bad_npz(request, tmp_path):
    make, words = BAD[request.param]
    p = tmp_path / "octmnist.npz"
    make(p)
    return p, words


def test_index_refuses_with_the_file_the_array_and_the_fix(bad_npz):
    p, words = bad_npz
    with pytest.raises(DataError) as e:
        index_dataset(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_inspect_and_full_both_refuse_in_one_line(bad_npz, tmp_path):
    """`inspect` said 'all readable' for 10 images with 40 labels and flat images; `full` then crashed."""
    p, words = bad_npz
    res = runner.invoke(app, ["inspect", str(p), "-q"])
    assert res.exit_code == 2 and res.output.startswith(f"error: {p}"), res.output
    res = runner.invoke(app, ["full", "--preset", "smoke", "--bridge", str(p), "--target", str(p),
                              "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert f"error: {p}" in res.output and words[0] in res.output.replace("\n", " ")


def test_the_cache_and_image_lists_check_the_file_they_read(tmp_path):
    """A file replaced after it was indexed (now 4 images where the index has 10) is named, not an
    IndexError from the decoding threads."""
    from mstl.data.cache import build_cache
    from mstl.edge.core.filelist import load_sources
    p = tmp_path / "octmnist.npz"
    np.savez(p, train_images=IMAGES, train_labels=LABELS)
    index = index_dataset(p)
    refs = list(index.paths)
    np.savez(p, train_images=IMAGES[:4], train_labels=LABELS[:4])
    with pytest.raises(DataError, match=r"no image 4 in train_images \(it holds 4\).*run the command again"):
        build_cache(index, 8, "bilinear", root=tmp_path / "cache", quiet=True)
    with pytest.raises(DataError, match=r"no image 4 in train_images"):
        load_sources(refs, 8, "bilinear")
    np.savez(p, train_images=np.zeros((10, 784), np.uint8), train_labels=LABELS)
    with pytest.raises(DataError, match=r"shape \(10, 784\)"):
        load_sources(refs[:1], 8, "bilinear")


def test_a_good_file_still_indexes_and_decodes(tmp_path):
    p = tmp_path / "pneumoniamnist.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(p, train_images=rng.integers(0, 255, (6, 28, 28, 1), dtype=np.uint8),
                        train_labels=np.array([0, 1, 0, 1, 0, 1]), test_images=rng.integers(0, 255, (2, 28, 28, 3),
                                                                                             dtype=np.uint8),
                        test_labels=np.array([[1], [0]], np.uint8))
    index = index_dataset(p)
    assert index.classes == ["NORMAL", "PNEUMONIA"] and len(index) == 8
    from mstl.data.cache import build_cache
    cache = build_cache(index, 16, "bilinear", root=tmp_path / "cache", quiet=True)
    assert cache.ok.all() and cache.images.shape == (8, 16, 16, 3)
