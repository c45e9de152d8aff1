"""Writing outputs: a failed write (full disk, read-only folder) as one line that names the folder and
what to do, and output paths checked before the work that fills them. No TensorFlow."""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from pathlib import Path
from typing import Callable

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class OutputError(RuntimeError):
    """An output could not be written; printed as one line by the CLIs."""


def reason(e: OSError) -> str | None:
    """What a failed write means for the user, or None when it is not a full disk or a locked folder."""
    if e.errno in DISK_FULL:
        return "the disk is full (no space left on device)"
    if e.errno in NOT_WRITABLE:
        return "the folder is not writable (read-only or no permission)"
    return None


def write_error(e: OSError, path: str | os.PathLike | None, fix: str = "") -> OutputError | None:
    """``e`` as an OutputError naming the folder of ``path`` (or the file the error names), or None when
    ``e`` is not a full disk or an unwritable folder."""
    why = reason(e)
    if why is None:
        return None
    target = Path(path) if path is not None else Path(e.filename) if getattr(e, "filename", None) else None
    where = f"{target.parent}: " if target is not None else ""
    tail = f"; {fix}" if fix else "; free some space (or choose another folder) and run the command again"
    return OutputError(f"{where}cannot write {target.name if target is not None else 'an output'}: {why}{tail}")


def write_then_rename(path: Path, tmp: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)``, then ``tmp`` renamed onto ``path``: the file is there whole or not at all. A failure
    (a full disk, an interrupt) removes what ``tmp`` held and is raised as it came: what it means for the
    user is the caller's to say (a run dir names the resume, the app answers 507). ``tmp`` is the caller's
    too: beside ``path``, hidden, and named so that nothing reads it as an output."""
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def nearest_folder(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, flag: str, folder: bool = False) -> None:
    """Refuse now, before any work, an output that cannot be written: ``path`` a file to (over)write, or
    with ``folder`` a folder to write into. Probes by creating (and removing) a file, which is what the
    write itself will need - permission bits alone say nothing for root or on a read-only mount."""
    p = Path(path)
    if not folder and p.is_dir():
        raise OutputError(f"{flag} {p}: is a folder; give a file name (e.g. {p / ('bench' + (p.suffix or '.json'))})")
    if folder and p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p}: is a file; give a folder")
    base = nearest_folder(p if folder else p.parent)
    if not base.is_dir():
        raise OutputError(f"{flag} {p}: {base} is a file, not a folder; give a path inside a folder")
    probe = base / f".mstl-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
        if not folder and p.exists():
            with open(p, "ab"):  # append mode: checks the file itself without touching its content
                pass
    except OSError as e:
        why = reason(e) or (e.strerror or type(e).__name__).lower()
        raise OutputError(f"{flag} {p}: cannot write there ({why}); choose another path (checked before any "
                          "work, so nothing is lost)") from None
