"""Progress and messages on stderr, so that stdout stays clean for --json output."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)


def say(msg: str) -> None:
    console.print(msg, markup=False)


def warn(msg: str) -> None:
    console.print(f"WARNING: {msg}", style="bold yellow", markup=False)


@contextlib.contextmanager
def progress_bar(label: str, total: int, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``. A live bar on a terminal; periodic plain lines otherwise (CI logs)."""
    if quiet or total == 0:
        yield lambda n=1: None
        return
    if console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as p:
            task = p.add_task(label, total=total)
            yield lambda n=1: p.advance(task, n)
        return
    state = {"done": 0, "last": time.monotonic()}
    start = state["last"]

    def advance(n: int = 1) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] > 10 or state["done"] == total:
            state["last"] = now
            rate = state["done"] / max(now - start, 1e-9)
            eta = (total - state["done"]) / rate if rate else float("inf")
            print(f"{label}: {state['done']}/{total} ({rate:.0f}/s, ETA {eta:.0f}s)", file=sys.stderr, flush=True)

    yield advance
