"""Turn a run config into the concrete data of a run: bridge subsets with validation splits, and the
target's train / validation / test splits, all deterministic for the config's data seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.cache import build_cache, default_cache_root
from ..edge.core.sources import DataError, DatasetIndex, index_dataset, shared_images
from ..data.splits import ClassMapping, binary_mapping, group_split, nested_subsets, stratified_sample
from ..data.synthetic import make_cxr_demo, make_oct_demo
from ..edge.core.progress import say, warn


@dataclass
class Source:
    """A dataset's usable images: rows of the decoded-image cache, their labels and patient groups."""

    index: DatasetIndex
    images: np.ndarray
    rows: np.ndarray
    labels: np.ndarray
    groups: list
    failures: list

    @property
    def classes(self) -> list[str]:
        return self.index.classes


@dataclass
class SplitRows:
    train: np.ndarray
    val: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray


@dataclass
class TargetSplits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    mapping: ClassMapping
    # Held out of stage-2 training to choose the operating point where there is no validation split.
    operating: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    y_operating: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def demo_paths(cfg: RunConfig) -> tuple[str, str]:
    root = default_cache_root() / "demo-data"
    bridge = make_oct_demo(root / f"oct-{cfg.demo_bridge_per_class}", cfg.demo_bridge_per_class)
    target = make_cxr_demo(root / f"cxr-{cfg.demo_target_per_class}", cfg.demo_target_per_class)
    return str(bridge), str(target)


def resolve_sources(cfg: RunConfig) -> tuple[str, str, bool]:
    """(bridge path, target path, whether the embedded demo data stands in for either)."""
    if cfg.bridge and cfg.target:
        return cfg.bridge, cfg.target, False
    if not (cfg.demo_bridge_per_class and cfg.demo_target_per_class):
        raise ValueError("the paper preset needs --bridge and --target (dataset folders or .npz files)")
    demo_bridge, demo_target = demo_paths(cfg)
    return cfg.bridge or demo_bridge, cfg.target or demo_target, True


def check_disjoint(bridge: DatasetIndex, target: DatasetIndex) -> None:
    """Refuse a target whose images are also bridge images: stage 1 would train on images that stage 2
    then tests on, and every target figure would be optimistic."""
    shared = shared_images(bridge, target)
    if shared:
        raise DataError(f"{len(shared)} target image(s) are also bridge images (e.g. {shared[0]}): stage 1 would "
                        f"train on images the target's test split then scores. Point --bridge ({bridge.root}) and "
                        f"--target ({target.root}) at disjoint folders, e.g. xray/train and xray/test")


def load_source(path: str, cfg: RunConfig, role: str, quiet: bool = False,
                index: DatasetIndex | None = None) -> Source:
    index = index if index is not None else index_dataset(path)
    if index.skipped:
        warn(f"{role} {path}: {len(index.skipped)} file(s) skipped, e.g. {index.skipped[0].path} "
             f"({index.skipped[0].reason}); `mstl-train inspect {path}` lists them all")
    cache = build_cache(index, cfg.data.image_size, cfg.data.resize_method, quiet=quiet)
    if cache.failures:
        warn(f"{role} {path}: {len(cache.failures)} unreadable image(s) left out, e.g. "
             f"{cache.failures[0].path} ({cache.failures[0].reason})")
    rows = np.flatnonzero(cache.ok)
    groups = [index.patients[i] for i in rows] if cfg.data.patient_split else [None] * len(rows)
    if cfg.data.patient_split:
        say(f"{role}: {index.layout} layout, {len(rows)} images, classes {index.counts()}; patient ids "
            + ("detected: splits keep each patient on one side" if index.patients_detected else "not detected"))
    return Source(index, cache.images, rows, index.labels[rows], groups, cache.failures)


def bridge_splits(src: Source, cfg: RunConfig) -> dict[int, SplitRows]:
    """Nested stratified subsets of the bridge, each with its fixed stratified validation split."""
    subsets = nested_subsets(src.labels, cfg.stage1.sizes, cfg.data_seed)
    out = {}
    for size, pos in subsets.items():
        tr, va = group_split(src.labels[pos], [src.groups[i] for i in pos], cfg.stage1.val_fraction,
                             cfg.data_seed + size, use_groups=cfg.data.patient_split)
        tr_pos, va_pos = pos[tr], pos[va]
        out[size] = SplitRows(src.rows[tr_pos], src.rows[va_pos], src.labels[tr_pos], src.labels[va_pos])
    return out


def target_splits(src: Source, cfg: RunConfig) -> TargetSplits:
    s2 = cfg.stage2
    mapping = binary_mapping(src.classes, s2.positive_class)
    n = len(src.rows)
    size = s2.target_size
    if size > n:
        say(f"target: {n} usable images, fewer than the configured {size}: using all of them")
        size = n
    pos = stratified_sample(src.labels, size, cfg.data_seed)
    g = [src.groups[i] for i in pos]
    rest, test = group_split(src.labels[pos], g, s2.test_fraction, cfg.data_seed + 1, cfg.data.patient_split)
    rest_pos, test_pos = pos[rest], pos[test]
    if s2.val_fraction > 0:
        tr, va = group_split(src.labels[rest_pos], [src.groups[i] for i in rest_pos], s2.val_fraction,
                             cfg.data_seed + 2, cfg.data.patient_split)
        tr_pos, va_pos = rest_pos[tr], rest_pos[va]
        op_pos = rest_pos[:0]
    else:  # the paper: stage 2 trains on everything that is not test, less the operating-point carve-out
        tr_pos, va_pos, op_pos = rest_pos, rest_pos[:0], rest_pos[:0]
        if s2.operating_fraction > 0:
            tr, op = group_split(src.labels[rest_pos], [src.groups[i] for i in rest_pos], s2.operating_fraction,
                                 cfg.data_seed + 3, cfg.data.patient_split)
            tr_pos, op_pos = rest_pos[tr], rest_pos[op]
    y = mapping.apply(src.labels)
    for split, part in (("training", tr_pos), ("validation", va_pos), ("test", test_pos),
                        ("operating-point carve-out", op_pos)):
        if not len(part) and split in ("validation", "operating-point carve-out"):
            continue
        missing = [name for k, name in enumerate(mapping.names) if not np.any(y[part] == k)]
        if missing:
            raise ValueError(
                f"target: no '{missing[0]}' image in the {split} split ({len(part)} images of {n}): a split "
                "without both classes cannot measure a classifier; use more target images (--target-size), "
                "another --positive-class, or a dataset with more of that class")
    return TargetSplits(
        src.rows[tr_pos], src.rows[va_pos], src.rows[test_pos], y[tr_pos], y[va_pos], y[test_pos], mapping,
        src.rows[op_pos], y[op_pos])


def data_fingerprint(bridge: Source, target: Source) -> str:
    return f"{bridge.index.fingerprint()}:{target.index.fingerprint()}"


def write_split_files(run_dir: Path, t: TargetSplits, src: Source) -> None:
    """The target's test and training splits as labelled file lists (binary labels), so that export
    (calibration, verification) and bench (accuracy) use exactly the run's images."""
    from ..edge.core.filelist import write_list
    from ..edge.core.rundir import split_list_path, write_labels
    for split, rows, y in (("test", t.test, t.y_test), ("val", t.val, t.y_val), ("train", t.train, t.y_train),
                           ("operating", t.operating, t.y_operating)):
        if split == "operating" and not len(rows):
            continue
        write_list(split_list_path(run_dir, split), [src.index.paths[int(r)] for r in rows], y)
    write_labels(run_dir, t.mapping.names)
