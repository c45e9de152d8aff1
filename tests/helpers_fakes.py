"""Stand-ins several test files use: a disk that fills up mid-write, a step that must not be reached."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def write_text_on_a_full_disk(keep: int) -> Callable:
    """A Path.write_text that writes the first ``keep`` characters and then fails as a full disk does."""
    real = Path.write_text

    def full(self, text, *a, **k):
        real(self, text[:keep], *a, **k)
        raise disk_full()
    return full


def forbid(monkeypatch, owner, name: str, what: str) -> None:
    """``owner.name`` fails the test (AssertionError ``what``) if called: a refusal must come before it."""
    def refuse(*a, **k):
        raise AssertionError(what)
    monkeypatch.setattr(owner, name, refuse)
