"""Labelled image lists shared by train (writes them), export and bench (read them): one
``<source>\t<label>`` per line, where a source is a file path or a MedMNIST ``npz:<file>:<split>:<i>``
(sources.npz_ref).
Decoding goes through the edge code path (Pillow), exactly as a device would feed a model."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .outputs import write_then_rename
from .images import load_image, resize_array
from .sources import index_dataset, is_npz_ref, npz_source_image


_ESCAPES = (("%", "%25"), ("\t", "%09"), ("\n", "%0A"), ("\r", "%0D"))


def _escape(source: str) -> str:
    """A file name may hold tabs and newlines: escaped, so that one line stays one image."""
    for raw, esc in _ESCAPES:
        source = source.replace(raw, esc)
    return source


def _unescape(text: str) -> str:
    for raw, esc in reversed(_ESCAPES):
        text = text.replace(esc, raw)
    return text


def write_list(path: Path, sources: list[str], labels) -> None:
    text = "".join(f"{_escape(s)}\t{int(y)}\n" for s, y in zip(sources, labels))
    # surrogateescape: names that are not UTF-8 keep their exact bytes
    write_then_rename(path, path.with_name(f".{path.name}.tmp{os.getpid()}"),
                      lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))


def read_list(path: Path) -> tuple[list[str], np.ndarray]:
    sources, labels = [], []
    for line in Path(path).read_text(encoding="utf-8", errors="surrogateescape").split("\n"):
        if line.strip():
            s, y = line.rsplit("\t", 1)
            sources.append(_unescape(s))
            labels.append(int(y))
    return sources, np.asarray(labels, dtype=np.int64)


def load_sources(sources: list[str], size: int, method: str, workers: int = 4) -> np.ndarray:
    """Decode a list of sources to an (N, size, size, 3) uint8 array."""
    npz: dict[str, dict[str, np.ndarray]] = {}

    def one(ref: str) -> np.ndarray:
        if is_npz_ref(ref):
            return resize_array(npz_source_image(ref, npz), size, method)
        return load_image(ref, size, method)

    if any(is_npz_ref(s) for s in sources):
        return np.stack([one(s) for s in sources]) if sources else np.zeros((0, size, size, 3), np.uint8)
    with ThreadPoolExecutor(workers) as pool:
        arrs = list(pool.map(one, sources))
    return np.stack(arrs) if arrs else np.zeros((0, size, size, 3), np.uint8)


def labelled_folder(path: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """All images of a labelled dataset folder (any layout), as (sources, labels, class names)."""
    index = index_dataset(path)
    return list(index.paths), index.labels, index.classes
