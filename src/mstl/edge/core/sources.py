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
    paths: list[str]  # file paths, or npz_ref references for MedMNIST
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
            # an .npz entry by its split and number only ("npz:<split>:<i>"): where the file lies is not content
            rel = os.path.relpath(p, self.root) if not is_npz_ref(p) else "npz:" + npz_entry(p)
            try:
                size = os.path.getsize(p) if not is_npz_ref(p) else 0
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
        if index.paths and is_npz_ref(index.paths[0]):  # entries of one .npz file
            try:
                st = os.stat(index.root)
            except OSError:
                return out
            return {(st.st_dev, st.st_ino, npz_entry(p)): p for p in index.paths}
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


MAX_NPZ_CLASSES = 1000  # class numbers above this are a broken file, not a dataset (a label of 2e9 was a MemoryError)
NPZ_SPLITS = ("train", "val", "test")


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """(shape, dtype, bytes stored) of every array in an .npz file, from the .npy headers: nothing is
    loaded, so a header that declares more than the file holds is found before any allocation."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[info.filename[:-4]] = (tuple(shape), dtype, info.file_size)
            return out
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a MedMNIST .npz ({e}: not a zip archive, or a truncated one); download it "
                        "again, or give a dataset folder") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e}); download it again") from None


def _check_npz_split(path: Path, split: str, headers: dict) -> None:
    """The images and labels of one split, as their headers declare them, are what indexing assumes."""
    (ishape, idtype, istored), (lshape, ldtype, lstored) = headers[f"{split}_images"], headers[f"{split}_labels"]
    images, labels = f"{split}_images", f"{split}_labels"
    for name, (shape, dtype, stored) in ((images, headers[images]), (labels, headers[labels])):
        declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if declared > stored:
            raise DataError(f"{path}: {name} declares {shape} ({declared:,} bytes) but holds {stored:,}; the file is "
                            "damaged: download it again")
    if len(ishape) not in (3, 4) or min(ishape[1:3], default=0) < 1 or (len(ishape) == 4 and ishape[3] not in (1, 3, 4)):
        raise DataError(f"{path}: {images} has shape {ishape}; MedMNIST images are (N, H, W) or (N, H, W, 1|3|4): "
                        "reshape flat rows to (N, H, W) before saving")
    if idtype != np.uint8:
        raise DataError(f"{path}: {images} is {idtype}; MedMNIST images are uint8 0..255: save them as "
                        "np.clip(x, 0, 255).astype(np.uint8) (scale [0, 1] floats by 255 first)")
    if not np.issubdtype(ldtype, np.integer):
        raise DataError(f"{path}: {labels} is {ldtype}; labels must be integer class numbers 0, 1, 2, ...")
    if len(lshape) not in (1, 2) or (len(lshape) == 2 and lshape[1] != 1):
        raise DataError(f"{path}: {labels} has shape {lshape}; one class number per image, shape (N,) or (N, 1) "
                        "(multi-label files such as ChestMNIST are not supported)")
    if lshape[0] != ishape[0]:
        raise DataError(f"{path}: {images} holds {ishape[0]:,} images but {labels} {lshape[0]:,} labels; each image "
                        "needs exactly one label: fix the file")


def npz_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """The validated headers of a MedMNIST file's splits (``<split>_images`` / ``<split>_labels``)."""
    headers = _npz_headers(path)
    splits = [s for s in NPZ_SPLITS if f"{s}_images" in headers or f"{s}_labels" in headers]
    if not splits:
        raise DataError(f"{path}: no MedMNIST keys (expected train_images/train_labels, val_..., test_...); "
                        f"found {sorted(headers)}")
    for s in splits:
        missing = [k for k in (f"{s}_images", f"{s}_labels") if k not in headers]
        if missing:
            raise DataError(f"{path}: {missing[0]} is missing while its split has "
                            f"{'labels' if missing[0].endswith('images') else 'images'}; add it or remove the split")
        _check_npz_split(path, s, headers)
    return {k: v for k, v in headers.items() if k.split("_")[0] in splits}


def npz_images(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The image arrays of a MedMNIST file by split, checked as indexing checks them."""
    path = Path(path)
    headers = npz_arrays(path)
    try:
        with np.load(path) as z:
            return {k[: -len("_images")]: z[k] for k in headers if k.endswith("_images")}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read its images ({e}); download it again") from None


# A MedMNIST image is named by one reference, in dataset indexes, file lists (a run dir's target_*.tsv)
# and bundles alike: npz:<file>:<split>:<i>, the .npz file's absolute path first (it may hold ':').
NPZ_PREFIX = "npz:"


def npz_ref(file: str, split: str, i: int) -> str:
    return f"{NPZ_PREFIX}{file}:{split}:{i}"


def is_npz_ref(source: str) -> bool:
    return source.startswith(NPZ_PREFIX)


def parse_npz_ref(ref: str) -> tuple[str, str, int]:
    """(file, split, i) of ``npz:<file>:<split>:<i>``; a DataError for anything else."""
    parts = ref[len(NPZ_PREFIX):].rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or parts[1] not in NPZ_SPLITS or not parts[2].isdigit():
        raise DataError(f"{ref}: not a MedMNIST image reference (npz:<file>:<split>:<index>, split one of "
                        f"{'/'.join(NPZ_SPLITS)}); list the images again from the .npz file")
    return parts[0], parts[1], int(parts[2])


def npz_entry(ref: str) -> str:
    """``<split>:<i>`` of a reference: the entry, whichever path the file was reached by."""
    _, split, i = parse_npz_ref(ref)
    return f"{split}:{i}"


def npz_source_image(ref: str, arrays_by_file: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """The image a reference names, each file's arrays read (and checked) once into ``arrays_by_file``."""
    file, split, i = parse_npz_ref(ref)
    if file not in arrays_by_file:
        arrays_by_file[file] = npz_images(file)
    return npz_image(arrays_by_file[file], file, split, i)


def npz_image(arrays: dict[str, np.ndarray], path: str, split: str, i: int) -> np.ndarray:
    """Image ``i`` of ``split``, or a DataError when the file no longer holds it (replaced since listed)."""
    if split not in arrays or not 0 <= i < len(arrays[split]):
        held = len(arrays[split]) if split in arrays else 0
        raise DataError(f"{path}: no image {i} in {split}_images (it holds {held:,}); the file changed since it was "
                        "indexed: run the command again on the new file")
    return arrays[split][i]


def _index_npz(path: Path) -> DatasetIndex:
    headers = npz_arrays(path)
    try:
        with np.load(path) as z:
            label_arrays = {s: np.asarray(z[f"{s}_labels"]).reshape(-1) for s in NPZ_SPLITS if f"{s}_labels" in headers}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    for s, lab in label_arrays.items():
        if lab.size and lab.min() < 0:
            raise DataError(f"{path}: {s}_labels must be class numbers 0, 1, 2, ... (found {lab[lab < 0][:1].tolist()} "
                            f"of dtype {lab.dtype}); fix the file's labels")
        if lab.size and lab.max() >= MAX_NPZ_CLASSES:
            raise DataError(f"{path}: {s}_labels holds class number {int(lab.max()):,}; labels are class numbers "
                            f"0, 1, 2, ... (at most {MAX_NPZ_CLASSES:,} classes): fix the file's labels")
    if not sum(lab.size for lab in label_arrays.values()):
        raise DataError(f"{path}: the .npz holds no images; give a file with images in train_images/val_/test_")
    n_classes = int(max(int(a.max(initial=0)) for a in label_arrays.values())) + 1
    stem = path.stem.split("_")[0].lower()
    classes = MEDMNIST_CLASSES.get(stem, [f"class_{i}" for i in range(n_classes)])
    if len(classes) < n_classes:
        classes = [f"class_{i}" for i in range(n_classes)]
    root = str(path.resolve())
    paths, labels, splits = [], [], []
    for s, lab in label_arrays.items():
        for i, y in enumerate(lab):
            paths.append(npz_ref(root, s, i))
            labels.append(int(y))
            splits.append(s)
    return DatasetIndex(root, "medmnist", classes, paths, np.asarray(labels, np.int64), splits,
                        [None] * len(paths))
