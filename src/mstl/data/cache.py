"""On-disk cache of decoded, resized uint8 images, so that later epochs, trials and runs never
decode the files again. One cache per (dataset content, image size, resize method)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..edge.core.progress import progress_bar
from ..edge.core.images import ImageError, load_image, resize_array
from ..edge.core.sources import DatasetIndex, Skipped, npz_images, npz_source_image

CACHE_VERSION = 2  # 2: 16-bit, 1-bit and palette pictures reduced like 8-bit ones, slivers along their long side


def default_cache_root() -> Path:
    env = os.environ.get("MSTL_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mstl"


@dataclass
class ImageCache:
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    ok: np.ndarray  # (N,) bool: False where the file could not be decoded
    failures: list[Skipped]
    path: Path

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


def _reader(index: DatasetIndex, size: int, method: str):
    if index.layout == "medmnist":
        arrays = {index.root: npz_images(index.root)}  # checked again: the file may have changed since it was indexed
        for ref in index.paths:  # every entry still there, before the decoding threads start
            npz_source_image(ref, arrays)

        def read(i: int) -> np.ndarray:
            return resize_array(npz_source_image(index.paths[i], arrays), size, method)
        return read

    def read(i: int) -> np.ndarray:
        return load_image(index.paths[i], size, method)
    return read


def build_cache(index: DatasetIndex, size: int, method: str, root: Path | None = None,
                workers: int | None = None, quiet: bool = False) -> ImageCache:
    """Decode every image of ``index`` once (in parallel) into a memory-mapped uint8 array."""
    root = Path(root) if root else default_cache_root()
    key = hashlib.sha256(f"{CACHE_VERSION}|{index.fingerprint()}|{size}|{method}".encode()).hexdigest()[:20]
    folder = root / f"images-{key}"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")
        ok = np.load(folder / "ok.npy")
        failures = [Skipped(f["path"], f["reason"]) for f in meta["failures"]]
        return ImageCache(images, ok, failures, folder)

    root.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename at the end: an interrupted build never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".images-{key}-", dir=root))
    try:
        n = len(index)
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        ok = np.zeros(n, dtype=bool)
        failures: list[Skipped] = []
        read = _reader(index, size, method)

        def work(i: int):
            try:
                out[i] = read(i)
                return i, None
            except ImageError as e:
                return i, e.reason

        workers = workers or min(8, (os.cpu_count() or 2) + 1)
        with ThreadPoolExecutor(workers) as pool, progress_bar(f"decoding {n} images", n, quiet) as advance:
            for i, reason in pool.map(work, range(n), chunksize=64):
                if reason is None:
                    ok[i] = True
                else:
                    failures.append(Skipped(index.paths[i], reason))
                advance(1)
        out.flush()
        np.save(tmp / "ok.npy", ok)
        (tmp / "meta.json").write_text(json.dumps({
            "n": n, "size": size, "method": method, "fingerprint": index.fingerprint(),
            "failures": [{"path": f.path, "reason": f.reason} for f in failures],
        }))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return build_cache(index, size, method, root, workers, quiet)
