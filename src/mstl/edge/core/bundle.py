"""The verification bundle: held-out images, their labels and the Keras model's answers for them,
written beside the exports so that any device can check an artifact against what the exporting
machine verified - natively with ``mstl-bench``, as the ``/device`` page does in a browser.

Images are copied byte for byte (the device decodes them as it decodes a camera's file); each file's
sha256 is in ``bundle.json``, whose own sha256 is in the manifest, and ``bundle.json`` names the sha256
of every artifact its answers were checked with: a changed image, a changed list or another build is
refused, never silently compared. Beside the Keras model's answers it keeps each artifact's own answers
as the exporting machine computed them from these files: a device that gives other answers runs other
kernels, which 100 images show exactly, where agreement with Keras on 100 images is only a sample.
No TensorFlow here: a board reads it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cards import CardError, read_manifest, sha256_file

FOLDER = "bundle"
INDEX = "bundle.json"
DEFAULT_SAMPLES = 100
VERSION = 1


class BundleError(ValueError):
    """A bundle that cannot be trusted, with the file and what to do."""


def write(out_dir: Path, sources: list[str], labels: np.ndarray, reference: np.ndarray, class_names: list[str],
          image_size: int, resize_method: str, artifacts: dict[str, str],
          answers: Callable[[list[str]], dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """``artifacts``: file name -> sha256 of the artifacts whose agreement the bundle checks; ``answers``:
    given the bundle's image files as written, each artifact's probabilities for them on this machine.
    Returns the manifest's entry (path, sha256, images)."""
    from .filelist import load_sources
    from .sources import is_npz_ref
    folder = out_dir / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    entries = []
    for i, (src, y, p) in enumerate(zip(sources, labels, reference)):
        stem = f"{i:04d}-{class_names[int(y)]}"
        if is_npz_ref(src) or not Path(src).is_file():  # an array in a .npz: as the PNG it decodes to
            from PIL import Image
            name = f"images/{stem}.png"
            Image.fromarray(load_sources([src], image_size, resize_method)[0]).save(folder / name)
        else:
            name = f"images/{stem}{Path(src).suffix.lower()}"
            shutil.copyfile(src, folder / name)
        entries.append({"file": name, "sha256": sha256_file(folder / name), "label": int(y),
                        "reference": [float(v) for v in p]})
    index = {"version": VERSION, "labels": list(class_names), "image_size": image_size,
             "resize_method": resize_method, "reference": "the Keras model's probabilities, on the exporting machine",
             "artifacts": dict(sorted(artifacts.items())), "images": entries}
    if answers is not None:
        got = answers([str(folder / e["file"]) for e in entries])
        index["answers_on"] = "each artifact's probabilities for these files on the exporting machine"
        index["answers"] = {name: [[float(v) for v in row] for row in np.asarray(p)] for name, p in sorted(got.items())}
    data = json.dumps(index, indent=1).encode()
    (folder / INDEX).write_bytes(data)
    return {"path": f"{FOLDER}/{INDEX}", "sha256": hashlib.sha256(data).hexdigest(), "images": len(entries)}


def find(exports: Path) -> Path | None:
    path = exports / FOLDER / INDEX
    return path if path.is_file() else None


def read(exports: Path) -> dict[str, Any]:
    """The bundle, checked: its index against the manifest, every image against its index. Returns the
    index with absolute ``paths``, ``labels`` and ``reference`` arrays."""
    path = exports / FOLDER / INDEX
    try:
        raw = path.read_bytes()
        index = json.loads(raw)
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable verification bundle ({e}); export again, or pass --data DIR") from None
    manifest = exports / "manifest.json"
    if manifest.is_file():
        try:
            want = (read_manifest(exports).get("bundle") or {}).get("sha256")
        except CardError as e:
            raise BundleError(str(e)) from None
        if want and hashlib.sha256(raw).hexdigest() != want:
            raise BundleError(f"{path}: its sha256 differs from the one in {manifest.name} - the bundle was changed "
                              "after export; export again (or copy the exports folder whole), or pass --data DIR")
    if index.get("version") != VERSION:
        raise BundleError(f"{path}: bundle version {index.get('version')!r}, this mstl reads {VERSION}; export again")
    paths = []
    for e in index["images"]:
        f = path.parent / e["file"]
        if not f.is_file() or sha256_file(f) != e["sha256"]:
            raise BundleError(f"{f}: {'missing' if not f.is_file() else 'its sha256 differs from bundle.json'} - "
                              "the bundle was changed after export; export again (or copy the exports folder whole), "
                              "or pass --data DIR")
        paths.append(str(f))
    return {**index, "paths": paths, "labels_array": np.asarray([e["label"] for e in index["images"]], np.int64),
            "reference_array": np.asarray([e["reference"] for e in index["images"]], np.float64),
            "answers_arrays": {k: np.asarray(v, np.float64) for k, v in (index.get("answers") or {}).items()}}
