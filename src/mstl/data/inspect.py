"""What a dataset source holds, with every file decoded so that unreadable ones are named up front."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ..edge.core.progress import progress_bar
from ..edge.core.images import verify_image
from ..edge.core.sources import DatasetIndex, Skipped, index_dataset


def inspect_source(path: str | os.PathLike, quiet: bool = False, workers: int | None = None) -> tuple[DatasetIndex, dict[str, Any]]:
    index = index_dataset(path)
    bad: list[Skipped] = []
    keep = np.ones(len(index), dtype=bool)
    if index.layout != "medmnist":
        workers = workers or min(8, (os.cpu_count() or 2) + 1)
        with ThreadPoolExecutor(workers) as pool, progress_bar(f"decoding {len(index)} files", len(index), quiet) as adv:
            for i, reason in enumerate(pool.map(verify_image, index.paths)):
                if reason is not None:
                    keep[i] = False
                    bad.append(Skipped(index.paths[i], reason))
                adv(1)
    readable = index.subset(np.flatnonzero(keep))
    readable.skipped = list(index.skipped) + bad
    return readable, summary(readable)


def summary(index: DatasetIndex, max_files: int | None = None) -> dict[str, Any]:
    skipped = index.skipped
    return {
        "path": index.root,
        "layout": index.layout,
        "classes": index.counts(),
        "splits": index.split_counts(),
        "total": len(index),
        "patients": {
            "detected": index.patients_detected,
            "unique": len({p for p in index.patients if p is not None}),
            "images_with_id": sum(p is not None for p in index.patients),
        },
        "ignored_masks": index.ignored,
        "skipped": {
            "count": len(skipped),
            "files": [{"path": s.path, "reason": s.reason} for s in (skipped if max_files is None else skipped[:max_files])],
        },
    }
