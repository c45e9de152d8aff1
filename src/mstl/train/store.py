"""The run directory for training: resolved config, lock, records and atomically written models.
Its file formats and writers are mstl.edge.core.rundir's (TF-free, shared with the bench and the app)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, run_config
# Re-exported for training code: the run directory's names and writers live in mstl.edge.core.rundir.
from ..edge.core.rundir import (CLAIMS, DRAWS, LABELS, REPORT, RESULTS, SELECTION, STAGE2_RESULTS, TRIALS_CSV,  # noqa: F401
                                append_jsonl, atomic_write_text, draw_dirs, process_running, read_jsonl, read_split,
                                write_failed, write_via_temp)
from ..edge.core.rundir import LOCKS_HELD, RunDir, RunDirError  # noqa: F401 (RunDirError: re-exported)


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


# What mstl writes in a run dir (relative glob patterns): all that --restart may remove.
OUTPUTS = (RESULTS, STAGE2_RESULTS, SELECTION, CLAIMS, REPORT, TRIALS_CSV, LABELS,
           "target_*.tsv", "stage1/size-*-seed-*/*.keras", "stage2/classifier-size-*-seed-*.keras", "figures/*.png",
           "cache/*.npy", "cache/*.json", "cache/.*.lock", "stage1/pending/*.keras", "ray_stage1.json", "exports/*", "bench/*", "bench.json", "bench.md",
           *(f"{folder}/{pattern}" if folder else pattern for folder in TEMP_FOLDERS for pattern in TEMP_PATTERNS))


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


class RunStore(RunDir):
    """A run dir as training writes it: rundir.RunDir's reading, and the config checked, the lock, the models."""

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
        if key in LOCKS_HELD:
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
        LOCKS_HELD[key] = fd

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

    def config(self) -> RunConfig:
        return run_config(self.dir)

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


