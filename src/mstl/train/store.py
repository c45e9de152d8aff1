"""The run directory for training: resolved config, lock, records and atomically written models.
Its file formats and writers are mstl.edge.core.rundir's (TF-free, shared with the bench and the app)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..config import RunConfig
# Re-exported for training code: the run directory's names and writers live in mstl.edge.core.rundir.
from ..edge.core.rundir import (CLAIMS, DRAWS, LABELS, REPORT, RESULTS, SELECTION, STAGE2_RESULTS, TRIALS_CSV,  # noqa: F401
                      RESUME_FIX, SPLIT_LISTS, append_jsonl, atomic_write_text, draw_dirs, process_running,
                      read_jsonl, read_split, split_list_path, write_failed, write_via_temp)
from ..sweep import optimal_record


class RunDirError(RuntimeError):
    pass


def save_model_atomic(model, path: Path) -> None:
    """``model`` (a Keras model, or the .keras file a worker saved it to) written to ``path`` under a
    temporary name, then renamed into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(e, path) from None

    def write(tmp: Path) -> None:
        if isinstance(model, (str, os.PathLike)):
            import shutil
            shutil.copyfile(model, tmp)
        else:
            model.save(tmp)
    write_via_temp(path, path.with_name(f".{path.stem}.tmp{os.getpid()}.keras"), write)


# Temporary files mstl names ``.<name>.tmp<pid>...`` or ``.<name>.partial<pid>``, in the run dir and in
# the folders it makes; a process killed mid-write (or stopped by a full disk) leaves them behind.
TEMP_PATTERNS = (".*.tmp*", ".*.partial*")
TEMP_FOLDERS = ("", "stage1/*", "stage1/pending", "stage2", "figures", "cache")


def stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary files in ``run_dir`` and its subfolders whose writer is no longer running."""
    import re
    out = []
    for folder in TEMP_FOLDERS:
        for pattern in TEMP_PATTERNS:
            for p in Path(run_dir).glob(f"{folder}/{pattern}" if folder else pattern):
                m = re.search(r"\.(?:tmp|partial)(\d+)", p.name)
                if p.is_file() and not (m and _running(int(m.group(1)))):
                    out.append(p)
    return sorted(set(out))


def _running(pid: int) -> bool:
    return pid == os.getpid() or process_running(pid)


_LOCKS: dict[str, int] = {}  # run dirs this process holds, with their lock file descriptors

# What mstl writes in a run dir (relative glob patterns): all that --restart may remove.
OUTPUTS = (RESULTS, STAGE2_RESULTS, SELECTION, CLAIMS, REPORT, TRIALS_CSV, LABELS,
           "target_*.tsv", "stage1/size-*-seed-*/*.keras", "stage2/classifier-size-*-seed-*.keras", "figures/*.png",
           "cache/*.npy", "cache/*.json", "cache/.*.lock", "stage1/pending/*.keras", "ray_stage1.json", "exports/*", "bench/*", "bench.json", "bench.md",
           *(f"{folder}/{pattern}" if folder else pattern for folder in TEMP_FOLDERS for pattern in TEMP_PATTERNS))


TRIAL_KEYS = ("size", "frozen", "seed", "val_accuracy", "val_loss")
STAGE2_KEYS = ("size", "seed", "accuracy", "ci_low", "ci_high")


def _complete(records: list[dict], keys: tuple[str, ...], path: Path) -> list[dict]:
    """Records with every key the run needs; others are named once and ignored (their work reruns)."""
    good = [r for r in records if isinstance(r, dict) and all(k in r for k in keys)]
    if len(good) < len(records):
        from ..edge.core.progress import warn
        bad = next(r for r in records if r not in good)
        missing = [k for k in keys if not isinstance(bad, dict) or k not in bad]
        warn(f"{path}: {len(records) - len(good)} record(s) lack {', '.join(missing)} and are ignored "
             "(their trials run again); was the file edited by hand?")
    return good


def is_run_dir(path: Path) -> bool:
    """A folder whose config.json mstl wrote."""
    cfg = Path(path) / "config.json"
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "config_hash" in d and "config" in d and "identity" in d


def remove_outputs(run_dir: Path) -> list[str]:
    """Delete what mstl writes in ``run_dir`` (and its further data draws), then the folders it made
    if they are empty. Returns the files left because mstl did not write them."""
    for sub in draw_dirs(run_dir):
        if is_run_dir(sub):
            remove_outputs(sub)
            (sub / "config.json").unlink(missing_ok=True)
            (sub / ".lock").unlink(missing_ok=True)
    for pattern in OUTPUTS:
        for p in run_dir.glob(pattern):
            if p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)
    kept = []
    for folder in ("stage1", "stage2", "figures", "cache", "exports", "bench", DRAWS):
        root = run_dir / folder
        if not root.is_dir():
            continue
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
            try:
                d.rmdir()
            except OSError:
                pass
        kept += [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []
    return kept


class RunStore:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)

    # layout
    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS

    @property
    def stage2_path(self) -> Path:
        return self.dir / STAGE2_RESULTS

    def stage1_model(self, size: int, frozen: int, seed: int) -> Path:
        return self.dir / "stage1" / f"size-{size}-seed-{seed}" / f"frozen-{frozen}.keras"

    def stage2_model(self, size: int, seed: int) -> Path:
        return self.dir / "stage2" / f"classifier-size-{size}-seed-{seed}.keras"

    # config
    def open(self, cfg: RunConfig, data_fingerprint: str, restart: bool = False) -> None:
        """Create the run dir, or check that an existing one was made with the same config.

        A folder that is not an mstl run dir is refused unless empty: mstl neither writes into nor
        deletes from a folder it did not make. ``restart`` removes only what mstl writes."""
        self.check_target()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.dir}: cannot create the run dir ({e.strerror}); choose another --run-dir") from None
        if not os.access(self.dir, os.W_OK):
            raise RunDirError(f"{self.dir}: the run dir is read-only; make it writable or choose another --run-dir")
        self.lock()
        self.remove_stale_temp()
        digest = cfg.config_hash(data_fingerprint)
        if self.config_path.exists() and not restart:
            old = json.loads(self.config_path.read_text())
            if old.get("config_hash") != digest:
                changed = _diff(old.get("identity", {}), cfg.identity())
                raise RunDirError(
                    f"{self.dir} was made with a different configuration or data "
                    f"({', '.join(changed) or 'dataset content'} differ); use another --run-dir, "
                    "or pass --restart to discard its results and start over"
                )
            return
        if restart:
            kept = remove_outputs(self.dir)
            if kept:
                from ..edge.core.progress import warn
                warn(f"--restart kept {len(kept)} file(s) that mstl did not write, e.g. {kept[0]}")
        atomic_write_text(self.config_path, json.dumps({
            "mstl_run_dir": 1, "config_hash": digest, "data_fingerprint": data_fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": cfg.to_dict(), "identity": cfg.identity(),
        }, indent=2))

    def check_target(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise RunDirError(f"{self.dir} is a file, not a folder; give --run-dir a new folder or an mstl run dir")
        if self.dir.is_dir() and not is_run_dir(self.dir) and any(self.dir.iterdir()):
            raise RunDirError(f"{self.dir} is not empty and is not an mstl run dir (no mstl config.json): mstl will "
                              "not write into it or delete from it; give a new or empty --run-dir")

    def lock(self) -> None:
        """One writer per run dir: a second mstl-train on the same folder is refused, naming the first.
        The lock is the kernel's (flock), so a killed process never leaves it stale."""
        import fcntl
        key = str(self.dir.resolve())
        if key in _LOCKS:
            return
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.dir} is being written by another mstl-train (process {holder}); wait for it "
                              "to finish or stop it, or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _LOCKS[key] = fd

    def remove_stale_temp(self) -> None:
        """Temporary files an interrupted write left anywhere in the run dir (a kill, a full disk); called
        with the lock held, so no other mstl-train is writing them."""
        stale = stale_temp_files(self.dir)
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            from ..edge.core.progress import say
            say(f"removed {len(stale)} temporary file(s) left by an interrupted write, e.g. "
                f"{stale[0].relative_to(self.dir)}")

    def writer(self) -> str | None:
        """The process id of another mstl-train holding this run dir's lock (training it right now), or
        None. A shared lock taken and dropped at once: it fails only while a writer holds the lock."""
        import fcntl
        if str(self.dir.resolve()) in _LOCKS or not (self.dir / ".lock").is_file():
            return None
        fd = os.open(self.dir / ".lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)  # closing drops the shared lock
        return None

    def config(self) -> RunConfig:
        if not self.config_path.exists():
            raise RunDirError(f"{self.dir}: no config.json - not a run directory (run `mstl-train full` first)")
        return RunConfig.from_dict(json.loads(self.config_path.read_text())["config"])

    def config_hash(self) -> str:
        return json.loads(self.config_path.read_text())["config_hash"]

    # records
    def trials(self) -> list[dict[str, Any]]:
        return _dedupe(_complete(read_jsonl(self.results_path), TRIAL_KEYS, self.results_path), ("size", "frozen", "seed"))

    def stage2_records(self) -> list[dict[str, Any]]:
        # the last record of a (size, seed) wins: it is the one whose model file was written last (a
        # model re-trained because its file went missing appends a new record)
        records = _complete(read_jsonl(self.stage2_path), STAGE2_KEYS, self.stage2_path)
        return _dedupe(records[::-1], ("size", "seed"))[::-1]

    def missing_stage2_models(self) -> list[tuple[int, int]]:
        """(size, seed) of stage-2 records whose model file is gone (deleted, or a copied run dir without
        it): they must be trained again before anything is selected or exported."""
        return [(r["size"], r["seed"]) for r in self.stage2_records()
                if r.get("model") and not (self.dir / r["model"]).is_file()]

    def stage2_done(self) -> set[tuple[int, int]]:
        """(size, seed) of stage 2 that is done: recorded, with its model file there. A record whose file
        is gone is named; its training runs again (and its new record replaces the old)."""
        missing = self.missing_stage2_models()
        if missing:
            from ..edge.core.progress import warn
            warn(f"{len(missing)} stage-2 model file(s) missing, e.g. {self.stage2_model(*missing[0])}: trained again")
        return {(r["size"], r["seed"]) for r in self.stage2_records()} - set(missing)

    def add_trial(self, record: dict[str, Any]) -> None:
        append_jsonl(self.results_path, record)

    def add_stage2(self, record: dict[str, Any]) -> None:
        append_jsonl(self.stage2_path, record)

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


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (list(vb) if isinstance(vb, (list, tuple)) else vb):
            out.append(f"{prefix}{k}")
    return out


def link_latest(run_dir: Path) -> None:
    """Point ``<runs root>/latest`` at this run, so later commands can default to it."""
    latest = run_dir.parent / "latest"
    try:
        tmp = run_dir.parent / f".latest.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, latest)
    except OSError:
        pass


def best_record(records: list[dict]) -> dict:
    """The optimal frozen depth of one size's sweep (``mstl.sweep.optimal_record``: the stop rule's own
    comparison, with its tie margin; a tie goes to more frozen layers)."""
    return optimal_record(records)
