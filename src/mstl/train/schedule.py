"""Which stage-1 trials to run next when several can run at once - pure, no TensorFlow, no Ray.

A sweep is a set of chains, one per (seed, size), each walking its depth grid until the stop rule
(``mstl.sweep.next_depth``) says the peak is found. In restart mode every depth starts from the same pretrained
weights, so the depths of a chain are independent trials and only *where the chain stops* is
sequential: a chain may look ahead and run depths that the stop rule has not asked for yet. Their
results are held back and committed in grid order, exactly as a serial sweep would have recorded
them; a held-back result beyond the stopping point is dropped and its still-running siblings are
cancelled. In continue mode a depth starts from the previous depth's model: no look-ahead.

The same ``Scheduler`` drives the Ray engine and the ``plan`` simulation, so the plan is a
simulation of the schedule that will actually run.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from ..sweep import next_depth

Key = tuple[int, int]  # (seed, size)


@dataclass
class Chain:
    seed: int
    size: int
    grid: list[int]
    committed: dict[int, dict] = field(default_factory=dict)  # depth -> record, in the run store
    held: dict[int, dict] = field(default_factory=dict)  # finished ahead of their turn
    running: set[int] = field(default_factory=set)
    finished: bool = False

    @property
    def key(self) -> Key:
        return (self.seed, self.size)


class Scheduler:
    """Decides launches, commits and cancellations for a set of chains.

    ``lookahead``: how many depths past the one the stop rule asks for a chain may run (restart
    mode only). The driver calls ``launches(free)`` for work, ``done(key, depth, record)`` when a
    trial ends, and ``commits()`` / ``cancels()`` to learn what to record and what to stop."""

    def __init__(self, grids: dict[Key, list[int]], committed: dict[Key, dict[int, dict]], patience: int,
                 continue_mode: bool = False, lookahead: int = 2):
        self.patience = patience
        self.lookahead = 0 if continue_mode else max(0, lookahead)
        # Larger sizes first: their trials are the longest, and starting the longest work first
        # shortens the schedule (the longest-processing-time rule).
        order = sorted(grids, key=lambda k: (-k[1], k[0]))
        self.chains = {k: Chain(k[0], k[1], list(grids[k]), dict(committed.get(k, {}))) for k in order}
        self._commits: list[tuple[Key, int, dict]] = []
        self._cancels: list[tuple[Key, int]] = []
        self.launched = self.wasted = 0
        for c in self.chains.values():
            self._advance(c)

    def _wanted(self, c: Chain) -> int | None:
        return next_depth(c.grid, c.committed, self.patience)

    def _advance(self, c: Chain) -> None:
        """Commit held results in grid order while the stop rule asks for them; finish the chain at its stop."""
        while True:
            d = self._wanted(c)
            if d is None:
                c.finished = True
                for late in sorted(c.running):
                    self._cancels.append((c.key, late))
                    self.wasted += 1
                self.wasted += len(c.held)
                c.running.clear()
                c.held.clear()
                return
            if d not in c.held:
                return
            rec = c.held.pop(d)
            c.committed[d] = rec
            self._commits.append((c.key, d, rec))

    def launches(self, free: int) -> list[tuple[Key, int]]:
        """Up to ``free`` (chain, depth) trials to start now: first every depth a stop rule asks for,
        then look-ahead depths, nearest first, round robin over chains."""
        out: list[tuple[Key, int]] = []
        for ahead in range(self.lookahead + 1):
            for c in self.chains.values():
                if len(out) >= free:
                    return out
                if c.finished:
                    continue
                d = self._candidate(c, ahead)
                if d is not None:
                    c.running.add(d)
                    self.launched += 1
                    out.append((c.key, d))
        return out

    def _candidate(self, c: Chain, ahead: int) -> int | None:
        wanted = self._wanted(c)
        if wanted is None:
            return None
        i = c.grid.index(wanted) + ahead
        if i >= len(c.grid):
            return None
        d = c.grid[i]
        return None if d in c.running or d in c.held or d in c.committed else d

    def done(self, key: Key, depth: int, record: dict) -> None:
        c = self.chains[key]
        c.running.discard(depth)
        if c.finished:  # cancelled in the meantime: its result counts for nothing
            return
        c.held[depth] = record
        self._advance(c)

    def failed(self, key: Key, depth: int) -> None:
        """A trial that raised: it can be launched again."""
        self.chains[key].running.discard(depth)
        self.launched -= 1

    def commits(self) -> list[tuple[Key, int, dict]]:
        out, self._commits = self._commits, []
        return out

    def cancels(self) -> list[tuple[Key, int]]:
        out, self._cancels = self._cancels, []
        return out

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.chains.values())

    @property
    def running(self) -> int:
        return sum(len(c.running) for c in self.chains.values())


def simulate(grids: dict[Key, list[int]], records: dict[Key, dict[int, dict]], seconds, workers: int,
             patience: int, continue_mode: bool = False, lookahead: int = 2,
             stage2_seconds: list[float] | None = None) -> dict:
    """Event simulation of the schedule on ``workers`` identical workers.

    ``records[key][depth]`` gives each trial's val_accuracy (what the stop rule reads); ``seconds(key,
    depth)`` its duration. A depth with no record (never reached by the measured run) only ever runs
    as look-ahead that the stop rule discards, so any value works for it; it gets 0.0. Stage 2 runs after
    the sweep, its trials in parallel. Returns wall time, committed and wasted trial counts."""
    sched = Scheduler(grids, {}, patience, continue_mode, lookahead)
    clock = 0.0
    events: list[tuple[float, int, Key, int]] = []  # (end time, tie-break, chain, depth)
    n = 0
    free = workers
    while True:
        for key, depth in sched.launches(free):
            dur = float(seconds(key, depth))
            heapq.heappush(events, (clock + dur, n, key, depth))
            n += 1
            free -= 1
        if not events:
            break
        end, _, key, depth = heapq.heappop(events)
        clock = end
        free += 1
        rec = records.get(key, {}).get(depth, {"val_accuracy": 0.0})
        sched.done(key, depth, rec)
        sched.commits()
        for k, d in sched.cancels():
            free += 1  # a cancelled trial frees its worker now
            events = [e for e in events if (e[2], e[3]) != (k, d)]
            heapq.heapify(events)
    sweep_s = clock
    committed = sum(len(c.committed) for c in sched.chains.values())
    stage2_s = _pack(stage2_seconds or [], workers)
    return {"workers": workers, "sweep_s": sweep_s, "stage2_s": stage2_s, "wall_s": sweep_s + stage2_s,
            "trials": committed, "launched": sched.launched, "wasted": sched.wasted}


def _pack(durations: list[float], workers: int) -> float:
    """Makespan of independent tasks, longest first, each to the first free worker."""
    ends = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        i = ends.index(min(ends))
        ends[i] += d
    return max(ends) if durations else 0.0
