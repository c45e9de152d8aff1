"""File names a hostile or careless user can produce: newlines, tabs, bytes that are not UTF-8."""

import os

import numpy as np
import pytest
from PIL import Image

from mstl.edge.core.filelist import load_sources, read_list, write_list
from mstl.edge.core.sources import DataError, index_dataset


def _png(path, level):
    Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(path, "PNG")


def test_names_with_newlines_tabs_and_non_utf8_bytes_round_trip(tmp_path):
    root = tmp_path / "data"
    for cls in ("A", "B"):
        (root / cls).mkdir(parents=True)
        _png(root / cls / "plain.png", 10)
    _png(root / "A" / "two\nlines.png", 50)
    _png(root / "B" / "tab\tname %09.png", 90)
    raw = os.path.join(os.fsencode(root / "B"), b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    with open(raw, "wb") as fh:
        Image.fromarray(np.full((8, 8, 3), 130, np.uint8)).save(fh, "PNG")
    ix = index_dataset(root)
    assert len(ix.paths) == 5 and len(ix.fingerprint()) == 16  # hashed without a UnicodeEncodeError
    lst = tmp_path / "list.tsv"
    write_list(lst, ix.paths, ix.labels)
    sources, labels = read_list(lst)
    assert sources == ix.paths and labels.tolist() == ix.labels.tolist()
    pixels = load_sources(sources, 8, "bilinear")
    assert sorted({int(p[0, 0, 0]) for p in pixels}) == [10, 50, 90, 130]


def test_negative_medmnist_labels_are_named(tmp_path):
    f = tmp_path / "octmnist.npz"
    np.savez(f, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.array([[0], [1], [-1], [2]]))
    with pytest.raises(DataError, match="train_labels must be class numbers.*-1"):
        index_dataset(f)
