"""Find the images of a dataset on disk and index them: items, labels, class names, splits, patients.

Layouts recognised (PROTOCOL.md):
  * ``covid-qu-ex``   <Lung|Infection Segmentation Data>/<Train|Val|Test>/<class>/images/*  (masks ignored)
  * ``split-folders`` <train|test|val>/<class>/*   (the OCT2017 layout; any case, any subset of splits)
  * ``class-folders`` <class>/*
  * ``medmnist``      a MedMNIST ``.npz`` file
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import is_image_name

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
COVID_PARTS = ("Lung Segmentation Data", "Infection Segmentation Data")
MEDMNIST_CLASSES = {
    "octmnist": ["CNV", "DME", "DRUSEN", "NORMAL"],
    "pneumoniamnist": ["NORMAL", "PNEUMONIA"],
}
_PATIENT_PATTERNS = (
    re.compile(r"^(?:CNV|DME|DRUSEN|NORMAL)-(\d+)-\d+", re.IGNORECASE),  # OCT2017
    re.compile(r"person(\d+)_", re.IGNORECASE),  # Kermany chest X-rays, pneumonia
    re.compile(r"^(?:NORMAL2-)?IM-(\d+)-\d+", re.IGNORECASE),  # Kermany chest X-rays, normal
)


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the path and what to do."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class DatasetIndex:
    root: str
    layout: str
    classes: list[str]
    paths: list[str]  # file paths, or "npz:<split>:<i>" references for MedMNIST
    labels: np.ndarray  # int64, index into classes
    splits: list[str | None]
    patients: list[str | None]
    skipped: list[Skipped] = field(default_factory=list)
    ignored: int = 0  # files deliberately not read (segmentation masks)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def patients_detected(self) -> bool:
        known = sum(p is not None for p in self.patients)
        return len(self.paths) > 0 and known >= 0.5 * len(self.paths)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(self.classes)) if len(self.labels) else np.zeros(len(self.classes), int)
        return {name: int(n) for name, n in zip(self.classes, c)}

    def split_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s, y in zip(self.splits, self.labels):
            key = s or "all"
            d = out.setdefault(key, {c: 0 for c in self.classes})
            d[self.classes[int(y)]] += 1
        return out

    def fingerprint(self) -> str:
        """Identity of the content that results depend on: relative paths, labels and file sizes."""
        h = hashlib.sha256()
        h.update(("|".join(self.classes) + "\n").encode())
        for p, y in zip(self.paths, self.labels):
            rel = os.path.relpath(p, self.root) if not p.startswith("npz:") else p
            try:
                size = os.path.getsize(p) if not p.startswith("npz:") else 0
            except OSError:
                size = -1
            # surrogateescape: a file name that is not UTF-8 still has its exact bytes, and a name
            # is hashed, never printed, here
            h.update(f"{rel}\t{int(y)}\t{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def subset(self, keep: np.ndarray) -> "DatasetIndex":
        keep = np.asarray(keep)
        return DatasetIndex(
            root=self.root, layout=self.layout, classes=list(self.classes),
            paths=[self.paths[i] for i in keep], labels=self.labels[keep],
            splits=[self.splits[i] for i in keep], patients=[self.patients[i] for i in keep],
            skipped=list(self.skipped), ignored=self.ignored,
        )


def patient_id(filename: str) -> str | None:
    for pat in _PATIENT_PATTERNS:
        m = pat.search(filename)
        if m:
            return m.group(1)
    return None


def _dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(path: Path) -> dict[str, Path]:
    found = {}
    for d in _dirs(path):
        key = SPLIT_NAMES.get(d.name.lower())
        if key:
            if key in found:
                raise DataError(f"{path}: two folders map to split {key!r} ({found[key].name}, {d.name}); keep one")
            found[key] = d
    return found


def detect_layout(root: str | os.PathLike) -> str:
    path = Path(root)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".npz":
            return "medmnist"
        raise DataError(f"{path}: a file, but not a MedMNIST .npz; give a dataset folder or an .npz file")
    names = {d.name for d in _dirs(path)}
    if path.name in COVID_PARTS or any(p in names for p in COVID_PARTS):
        return "covid-qu-ex"
    if _split_dirs(path):
        return "split-folders"
    if _dirs(path):
        return "class-folders"
    raise DataError(
        f"{path}: unknown layout - no sub-folders found. Expected class folders (<class>/*.jpeg), split folders "
        "(train|val|test/<class>/*), the COVID-QU-Ex layout, or a MedMNIST .npz file"
    )


def index_dataset(root: str | os.PathLike, covid_part: str = "Lung Segmentation Data") -> DatasetIndex:
    """Index a dataset without decoding images (``inspect`` and the image cache decode them)."""
    layout = detect_layout(root)
    if layout == "medmnist":
        return _index_npz(Path(root))
    path = Path(root).resolve()
    if layout == "covid-qu-ex":
        base = path if path.name in COVID_PARTS else path / covid_part
        if not base.is_dir():
            raise DataError(f"{path}: COVID-QU-Ex layout without {covid_part!r}; found {[d.name for d in _dirs(path)]}")
        split_roots = _split_dirs(base)
        if not split_roots:
            raise DataError(f"{base}: no Train/Val/Test folders")
        return _index_folders(path, layout, split_roots, images_subdir="images", walk_root=base)
    if layout == "split-folders":
        return _index_folders(path, layout, _split_dirs(path), walk_root=path)
    return _index_folders(path, layout, {None: path}, walk_root=path)


def shared_images(bridge: DatasetIndex, target: DatasetIndex) -> list[str]:
    """Target images that are bridge images too: the same file (device and inode, so links and nested
    folders count), or the same entry of the same .npz file."""
    def keys(index: DatasetIndex) -> dict:
        out: dict = {}
        if index.paths and index.paths[0].startswith("npz:"):  # entries of one .npz file
            try:
                st = os.stat(index.root)
            except OSError:
                return out
            return {(st.st_dev, st.st_ino, p): p for p in index.paths}
        for p in index.paths:
            try:
                st = os.stat(p)
            except OSError:
                continue  # unreadable: the decode step names it
            out[(st.st_dev, st.st_ino)] = p
        return out
    b, t = keys(bridge), keys(target)
    return sorted(t[k] for k in t.keys() & b.keys())


def _special(fp: str) -> bool:
    try:
        mode = os.stat(fp).st_mode
    except OSError:
        return False  # missing (a dangling link): the decode step names it
    return not stat.S_ISREG(mode)


def _index_folders(root: Path, layout: str, split_roots: dict, images_subdir: str | None = None,
                   walk_root: Path | None = None) -> DatasetIndex:
    class_names: set[str] = set()
    for sroot in split_roots.values():
        class_names.update(d.name for d in _dirs(sroot))
    classes = sorted(class_names)
    if not classes:
        raise DataError(f"{root}: no class folders found under {[str(p) for p in split_roots.values()]}")
    paths, labels, splits, patients, skipped = [], [], [], [], []
    seen: set[str] = set()
    for split, sroot in sorted(split_roots.items(), key=lambda kv: str(kv[0])):
        for ci, cname in enumerate(classes):
            cdir = sroot / cname
            if not cdir.is_dir():
                continue
            img_dir = cdir / images_subdir if images_subdir else cdir
            n_before = len(paths)
            for dirpath, dirnames, filenames in os.walk(img_dir):
                dirnames.sort()
                for fn in sorted(filenames):
                    fp = os.path.join(dirpath, fn)
                    seen.add(fp)
                    if not is_image_name(fn):
                        skipped.append(Skipped(fp, "not an image file (by its name)"))
                        continue
                    if _special(fp):
                        skipped.append(Skipped(fp, "not a regular file (a FIFO, socket or device): reading it "
                                                   "could wait forever"))
                        continue
                    paths.append(fp)
                    labels.append(ci)
                    splits.append(split)
                    patients.append(patient_id(fn))
            if len(paths) == n_before:
                skipped.append(Skipped(str(img_dir), f"empty class folder: no images for class {cname!r}"))
    # Every other file under the tree is reported, except segmentation masks, which are ignored on purpose.
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(walk_root or root):
        dirnames.sort()
        in_masks = images_subdir is not None and "masks" in Path(dirpath).parts
        for fn in sorted(filenames):
            fp = os.path.join(dirpath, fn)
            if fp in seen:
                continue
            if in_masks and is_image_name(fn):
                ignored += 1
            else:
                reason = "not an image file (by its name)" if not is_image_name(fn) else "image outside any class folder"
                skipped.append(Skipped(fp, reason))
    if not paths:
        raise DataError(f"{root}: layout {layout!r} recognised but no images found; check the folder")
    return DatasetIndex(str(root), layout, classes, paths, np.asarray(labels, np.int64), splits, patients,
                        skipped, ignored)


def _index_npz(path: Path) -> DatasetIndex:
    try:
        with np.load(path) as z:
            keys = set(z.files)
            label_arrays = {s: np.asarray(z[f"{s}_labels"]).reshape(-1) for s in ("train", "val", "test")
                            if f"{s}_images" in keys and f"{s}_labels" in keys}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    if not label_arrays:
        raise DataError(f"{path}: no MedMNIST keys (expected train_images/train_labels, val_..., test_...); found {sorted(keys)}")
    for s, lab in label_arrays.items():
        if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0):
            bad = lab[lab < 0][:1] if np.issubdtype(lab.dtype, np.number) else lab[:1]
            raise DataError(f"{path}: {s}_labels must be class numbers 0, 1, 2, ... (found {bad.tolist()} of dtype "
                            f"{lab.dtype}); fix the file's labels")
    n_classes = int(max(int(a.max(initial=0)) for a in label_arrays.values())) + 1
    stem = path.stem.split("_")[0].lower()
    classes = MEDMNIST_CLASSES.get(stem, [f"class_{i}" for i in range(n_classes)])
    if len(classes) < n_classes:
        classes = [f"class_{i}" for i in range(n_classes)]
    paths, labels, splits = [], [], []
    for s, lab in label_arrays.items():
        for i, y in enumerate(lab):
            paths.append(f"npz:{s}:{i}")
            labels.append(int(y))
            splits.append(s)
    return DatasetIndex(str(path.resolve()), "medmnist", classes, paths, np.asarray(labels, np.int64), splits,
                        [None] * len(paths))
