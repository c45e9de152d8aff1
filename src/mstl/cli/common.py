"""Shared CLI plumbing: turning known errors into one clear line and an exit code."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import typer

from ..edge.core.progress import console


class UserError(Exception):
    """Raised by library code for input the user can fix; printed as one line."""


def check_fraction(flag: str, value: float | None) -> None:
    """A threshold from 0 to 1 (NaN fails too: every comparison with it is false)."""
    if value is not None and not 0 <= value <= 1:
        raise UserError(f"{flag} is a fraction from 0 to 1, got {value}")


def check_at_least(flag: str, value: float | None, least: float) -> None:
    if value is not None and not value >= least:
        raise UserError(f"{flag} must be {least} or more, got {value}")


def known_errors() -> tuple[type[BaseException], ...]:
    from ..edge.core.images import ImageError
    from ..edge.core.sources import DataError
    from ..data.splits import SelectionError
    from ..edge.core.outputs import OutputError
    from ..edge.core.rundir import RunDirError

    errors: list[type[BaseException]] = [UserError, ImageError, DataError, SelectionError, FileNotFoundError,
                                         ValueError, OutputError, RunDirError]
    if "mstl.model" in sys.modules:
        errors.append(sys.modules["mstl.model"].WeightsError)
    return tuple(errors)


def friendly(fn: Callable) -> Callable:
    """Print a known error as 'error: ...' (no traceback) and exit 2; MSTL_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import os
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            console.print("interrupted: finished trials are kept; rerun the same command to resume")
            raise typer.Exit(130)
        except Exception as e:
            if isinstance(e, OSError) and not os.environ.get("MSTL_DEBUG"):
                # a full disk or a read-only file system met anywhere (a library's own write): one line
                # naming it. Not EACCES: a file that cannot be *read* raises that too.
                import errno
                from ..edge.core.outputs import DISK_FULL, write_error
                if e.errno in DISK_FULL + (errno.EROFS,):
                    e = write_error(e, None) or e
            if os.environ.get("MSTL_DEBUG") or not isinstance(e, known_errors()):
                raise
            console.print(f"error: {e}", style="bold red", markup=False, highlight=False)
            raise typer.Exit(2)

    return wrapper


def parse_ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(int(v.replace("_", "").replace("k", "000")) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers like 10000,20000 (got {text!r})")
    if not vals:
        raise typer.BadParameter(f"{what} is empty")
    return vals
