"""The run directory: resolved config, append-only result logs, atomically written models.

A ``kill -9`` at any moment loses at most the record being written: records are single lines
appended with one write and fsync'd, a torn last line is ignored on read, and files are written under
a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..config import RunConfig


class RunDirError(RuntimeError):
    pass


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
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model_atomic(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)


class RunStore:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)

    # layout
    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    @property
    def results_path(self) -> Path:
        return self.dir / "results.jsonl"

    @property
    def stage2_path(self) -> Path:
        return self.dir / "stage2.jsonl"

    def stage1_model(self, size: int, frozen: int, seed: int) -> Path:
        return self.dir / "stage1" / f"size-{size}-seed-{seed}" / f"frozen-{frozen}.keras"

    def stage2_model(self, size: int, seed: int) -> Path:
        return self.dir / "stage2" / f"classifier-size-{size}-seed-{seed}.keras"

    # config
    def open(self, cfg: RunConfig, data_fingerprint: str, restart: bool = False) -> None:
        """Create the run dir, or check that an existing one was made with the same config."""
        self.dir.mkdir(parents=True, exist_ok=True)
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
            for p in (self.results_path, self.stage2_path):
                p.unlink(missing_ok=True)
            for sub in ("stage1", "stage2", "figures", "cache", "draws"):
                _rmtree(self.dir / sub)
        atomic_write_text(self.config_path, json.dumps({
            "config_hash": digest, "data_fingerprint": data_fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": cfg.to_dict(), "identity": cfg.identity(),
        }, indent=2))

    def config(self) -> RunConfig:
        if not self.config_path.exists():
            raise RunDirError(f"{self.dir}: no config.json - not a run directory (run `mstl-train full` first)")
        return RunConfig.from_dict(json.loads(self.config_path.read_text())["config"])

    def config_hash(self) -> str:
        return json.loads(self.config_path.read_text())["config_hash"]

    # records
    def trials(self) -> list[dict[str, Any]]:
        return _dedupe(read_jsonl(self.results_path), ("size", "frozen", "seed"))

    def stage2_records(self) -> list[dict[str, Any]]:
        return _dedupe(read_jsonl(self.stage2_path), ("size", "seed"))

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


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


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
    """The optimal frozen depth of one size's sweep: highest validation accuracy; ties go to the lower
    validation loss, then to more frozen layers (cheaper to fine-tune and to cache)."""
    return max(records, key=lambda r: (r["val_accuracy"], -r["val_loss"], r["frozen"]))
