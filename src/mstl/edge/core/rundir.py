"""The run directory's files as every part of mstl reads them - training, export, report, the bench
and the app - with no TensorFlow and no training code: its split lists, append-only record logs and
files written under a temporary name and renamed. A ``kill -9`` at any moment loses at most the
record being written: records are single lines appended with one write and fsync'd, a torn last line
is ignored on read. (train/store.py's RunStore adds the config, the lock and the models.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a record torn by a kill: its trial is simply run again
    return out


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    # A torn previous line must not swallow this record: start on a fresh line.
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                data = b"\n" + data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)  # a short write on a full disk is a torn line, ignored on read
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_failed(e, path) from None


RESUME_FIX = "free some space and rerun the same command: finished trials are kept and the run resumes"


def write_failed(e: OSError, path: Path) -> Exception:
    from .outputs import write_error
    return write_error(e, path, RESUME_FIX) or e


def write_via_temp(path: Path, tmp: Path, write) -> None:
    """``write(tmp)``, then ``tmp`` renamed to ``path``; a failed write (a full disk) removes what it had
    written, so nothing half-written is left to pass for an output."""
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_failed(e, path) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    write_via_temp(path, path.with_name(f".{path.name}.tmp{os.getpid()}"), lambda tmp: tmp.write_text(text))


# The run directory's files and folders, named once (train writes them; export, report, the bench and
# the app read them).
RESULTS = "results.jsonl"  # stage-1 trial records
STAGE2_RESULTS = "stage2.jsonl"
SELECTION = "selection.json"  # the deployable model, and its operating point
LABELS = "labels.txt"  # class names, one per line, in the model's output order
CLAIMS = "claims.json"
REPORT = "report.md"
TRIALS_CSV = "trials.csv"
DRAWS = "draws"  # further data draws, each a run dir of its own


def draw_dir(run_dir: Path, data_seed: int) -> Path:
    return Path(run_dir) / DRAWS / f"data-seed-{data_seed}"


def draw_dirs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / DRAWS).glob("data-seed-*"))


def read_selection(run_dir: Path) -> dict[str, Any] | None:
    """selection.json, or None before stage 2 has chosen."""
    path = Path(run_dir) / SELECTION
    return json.loads(path.read_text()) if path.exists() else None


def write_labels(folder: Path, names: list[str]) -> None:
    (Path(folder) / LABELS).write_text("\n".join(names) + "\n")


def read_labels(folder: Path) -> list[str]:
    return (Path(folder) / LABELS).read_text().split("\n")[:-1]


# The target's splits as labelled file lists (written by train, read by report, export, bench and the app).
SPLIT_LISTS = {"test": "target_test.tsv", "val": "target_val.tsv", "train": "target_train.tsv",
               "operating": "target_operating.tsv"}  # the operating-point carve-out (presets without val)


def split_list_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / SPLIT_LISTS[split]


def read_split(run_dir: Path, split: str):
    """(sources, labels) of a target split of ``run_dir``, or None when the run has no such list
    (a paper-preset run has no validation split; an exports folder copied out of its run has none)."""
    import numpy as np
    from .filelist import read_list
    path = split_list_path(run_dir, split)
    if not path.is_file():
        return None
    sources, labels = read_list(path)
    return sources, np.asarray(labels)


def process_running(pid: int) -> bool:
    """Whether a process ``pid`` exists (a process of another user counts): the writer a leftover file names."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
