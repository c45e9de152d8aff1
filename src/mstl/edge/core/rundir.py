"""The run directory's files as every part of mstl reads them - training, export, report, the bench
and the app - with no TensorFlow and no training code: its split lists, append-only record logs and
files written under a temporary name and renamed. A ``kill -9`` at any moment loses at most the
record being written: records are single lines appended with one write and fsync'd, a torn last line
is ignored on read. (train/store.py's RunStore adds the config's checks, the lock and the models.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


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
    from .outputs import write_then_rename
    try:
        write_then_rename(path, tmp, write)
    except OSError as e:
        raise write_failed(e, path) from None


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
    """selection.json, or None before stage 2 has chosen; a file that is not a JSON object (edited by
    hand, copied in part) is a ValueError that names it and the command that writes it again."""
    path = Path(run_dir) / SELECTION
    if not path.exists():
        return None
    again = f"run `mstl-train stage2 {Path(run_dir)}` to write it again"
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {again}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object; {again}")
    return doc


def write_labels(folder: Path, names: list[str]) -> None:
    (Path(folder) / LABELS).write_text("\n".join(names) + "\n")


def read_labels(folder: Path) -> list[str]:
    """The class names of labels.txt, one a line; a last line without its newline (an editor that
    strips it) is still a class."""
    names = (Path(folder) / LABELS).read_text().split("\n")
    return names[:-1] if names[-1] == "" else names


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


class RunDirError(RuntimeError):
    pass


CONFIG = "config.json"  # the resolved config a run dir was made with, and its hash

# Run dirs this process holds the lock of (train.store's RunStore.lock), with their lock file descriptors.
LOCKS_HELD: dict[str, int] = {}

TRIAL_KEYS = ("size", "frozen", "seed", "val_accuracy", "val_loss")
STAGE2_KEYS = ("size", "seed", "accuracy", "ci_low", "ci_high")


def _complete(records: list[dict], keys: tuple[str, ...], path: Path) -> list[dict]:
    """Records with every key the run needs; others are named once and ignored (their work reruns)."""
    good = [r for r in records if isinstance(r, dict) and all(k in r for k in keys)]
    if len(good) < len(records):
        from .progress import warn
        bad = next(r for r in records if r not in good)
        missing = [k for k in keys if not isinstance(bad, dict) or k not in bad]
        warn(f"{path}: {len(records) - len(good)} record(s) lack {', '.join(missing)} and are ignored "
             "(their trials run again); was the file edited by hand?")
    return good


class RunDir:
    """A run dir as whoever reads it sees it - export, the report, training itself: the config it was
    made with, its stage-1 and stage-2 records, who is training it now. (train.store's RunStore adds
    the config's checks, the lock and the models.)"""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)

    # layout
    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS

    @property
    def stage2_path(self) -> Path:
        return self.dir / STAGE2_RESULTS

    def writer(self) -> str | None:
        """The process id of another mstl-train holding this run dir's lock (training it right now), or
        None. A shared lock taken and dropped at once: it fails only while a writer holds the lock."""
        import fcntl
        if str(self.dir.resolve()) in LOCKS_HELD or not (self.dir / ".lock").is_file():
            return None
        fd = os.open(self.dir / ".lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)  # closing drops the shared lock
        return None

    # config
    def config_json(self) -> dict[str, Any]:
        """config.json as mstl-train wrote it (mstl.config.run_config makes the run config of it)."""
        if not self.config_path.exists():
            raise RunDirError(f"{self.dir}: no config.json - not a run directory (run `mstl-train full` first)")
        return json.loads(self.config_path.read_text())

    def config_hash(self) -> str:
        return self.config_json()["config_hash"]

    # records
    def trials(self) -> list[dict[str, Any]]:
        return _dedupe(_complete(read_jsonl(self.results_path), TRIAL_KEYS, self.results_path), ("size", "frozen", "seed"))

    def stage2_records(self) -> list[dict[str, Any]]:
        # the last record of a (size, seed) wins: it is the one whose model file was written last (a
        # model re-trained because its file went missing appends a new record)
        records = _complete(read_jsonl(self.stage2_path), STAGE2_KEYS, self.stage2_path)
        return _dedupe(records[::-1], ("size", "seed"))[::-1]

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))
        return path


def _dedupe(records: Iterable[dict], key: tuple[str, ...]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        k = tuple(r.get(f) for f in key)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out
