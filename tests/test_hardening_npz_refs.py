"""One MedMNIST image reference, npz:<file>:<split>:<i>, with one decoder (issue 22): the dataset index,
the image cache, a run dir's file lists and the verification bundle all name and read an image alike."""

import json
import os

import numpy as np
import pytest

from mstl.edge.core.sources import DataError, index_dataset, npz_entry, npz_ref, parse_npz_ref, shared_images


def _npz(path, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8), train_labels=np.arange(6) % 2,
             test_images=rng.integers(0, 255, (3, 28, 28), dtype=np.uint8), test_labels=np.array([0, 1, 0]))
    return path


def test_a_reference_names_its_file_even_with_colons(tmp_path):
    p = _npz(tmp_path / "a:b" / "pneumoniamnist.npz")
    index = index_dataset(p)
    assert index.paths[0] == npz_ref(str(p.resolve()), "train", 0) == f"npz:{p.resolve()}:train:0"
    assert parse_npz_ref(index.paths[-1]) == (str(p.resolve()), "test", 2)
    assert npz_entry(index.paths[-1]) == "test:2"


@pytest.mark.parametrize("ref", ["npz:train:3", "npz:/x.npz:holdout:1", "npz:/x.npz:train:-1", "npz:"])
def test_a_reference_not_in_the_format_is_one_clear_line(ref):
    with pytest.raises(DataError) as e:
        parse_npz_ref(ref)
    assert str(e.value).startswith(f"{ref}: not a MedMNIST image reference") and "\n" not in str(e.value)


def test_the_fingerprint_is_the_content_not_where_the_file_lies(tmp_path):
    """Unchanged by the references carrying the file (runs resume, caches are found again)."""
    a = index_dataset(_npz(tmp_path / "one" / "pneumoniamnist.npz"))
    b = index_dataset(_npz(tmp_path / "two" / "pneumoniamnist.npz"))
    assert a.paths != b.paths and a.fingerprint() == b.fingerprint()
    assert index_dataset(_npz(tmp_path / "three" / "pneumoniamnist.npz", seed=1)).fingerprint() == a.fingerprint()


def test_one_file_reached_by_two_paths_shares_its_images(tmp_path):
    p = _npz(tmp_path / "pneumoniamnist.npz")
    link = tmp_path / "linked.npz"
    os.symlink(p, link)
    shared = shared_images(index_dataset(p), index_dataset(link))
    assert len(shared) == 9
    assert shared_images(index_dataset(p), index_dataset(_npz(tmp_path / "other" / "x.npz"))) == []


def test_a_file_list_the_cache_and_the_bundle_decode_the_same_pixels(tmp_path):
    from mstl.edge.core.bundle import write
    from mstl.data.cache import build_cache
    from mstl.edge.core.filelist import load_sources, read_list, write_list
    index = index_dataset(_npz(tmp_path / "pneumoniamnist.npz"))
    write_list(tmp_path / "target_test.tsv", index.paths, index.labels)
    refs, labels = read_list(tmp_path / "target_test.tsv")
    assert refs == index.paths and labels.tolist() == index.labels.tolist()
    cache = build_cache(index, 16, "bilinear", root=tmp_path / "cache", quiet=True)
    assert np.array_equal(load_sources(refs, 16, "bilinear"), cache.images)
    # the bundle decoded an .npz reference as a file name ("file not found") and stopped the export
    entry = write(tmp_path / "exports", refs[:2], labels[:2], np.full((2, 2), 0.5), ["NORMAL", "PNEUMONIA"], 16,
                  "bilinear", {})
    assert entry["images"] == 2
    bundle = json.loads((tmp_path / "exports" / "bundle" / "bundle.json").read_text())
    from PIL import Image
    first = np.asarray(Image.open(tmp_path / "exports" / "bundle" / bundle["images"][0]["file"]))
    assert np.array_equal(first, cache.images[0])
