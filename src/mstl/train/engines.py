"""Which engine runs a study's trials - the one place that chooses (the CLI calls these).

``serial`` runs them in this process (``run``), ``ray`` as Ray tasks (``ray_engine``, imported only
when asked for: Ray is an optional extra). Both record the same trials in the same order through the
same commit (``stage1.commit_trial``), with the same TensorFlow threads per trial (the config's
``trial_threads``), so a study may be started on one and resumed on the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from .run import RunData, run_stage1 as serial_stage1, run_stage2 as serial_stage2, select, stage2_jobs
from .store import RunStore

ENGINES = ("serial", "ray")


@dataclass(frozen=True)
class EngineOptions:
    """How trials are executed; not part of the run's configuration (a run may resume on another engine).
    The threads a trial computes with are the config's (``trial_threads``); ``trial_cpus`` is what a Ray
    trial reserves, by default as many CPUs as it has threads."""

    name: str = "serial"  # serial | ray
    address: str | None = None  # None: a local Ray instance sized to this machine; "auto" or HOST:PORT: join
    trial_cpus: float | None = None  # None: the config's trial_threads
    trial_gpus: float = 0.0
    lookahead: int = 2  # depths a restart-mode chain may run past the one its stop rule asks for
    local_cpus: int | None = None  # CPUs of a local instance (default: all of this machine's)

    def validate(self) -> "EngineOptions":
        if self.name not in ENGINES:
            raise ValueError(f"--engine {self.name!r}: use serial or ray")
        if (self.trial_cpus is not None and not self.trial_cpus > 0) or not self.trial_gpus >= 0:
            raise ValueError("--trial-cpus must be > 0 and --trial-gpus >= 0")
        if self.lookahead < 0:
            raise ValueError("--lookahead must be >= 0")
        if self.local_cpus is not None and (self.local_cpus < 1 or self.address):
            raise ValueError("--ray-cpus sizes a local Ray instance: a positive count, without --ray-address")
        return self

    def cpus_per_trial(self, cfg) -> float:
        return float(self.trial_cpus if self.trial_cpus is not None else cfg.trial_threads)


def run_stage1(store: RunStore, data: RunData, engine: EngineOptions | None = None) -> dict[tuple[int, int], dict]:
    """The sweep of every (size, seed); the best record of each."""
    if engine is not None and engine.name == "ray":
        from . import ray_engine
        return ray_engine.run_stage1(store, data, engine)
    return serial_stage1(store, data)


def run_stage2(store: RunStore, data: RunData, engine: EngineOptions | None = None) -> dict:
    """Stage 2 per (size, seed) and the control, then the deployable model's selection."""
    todo, n_jobs = stage2_jobs(store, data)
    if todo and engine is not None and engine.name == "ray":
        from . import ray_engine
        ray_engine.run_stage2(store, data, engine, todo)
    elif todo:
        serial_stage2(store, data, todo, n_jobs)
    return select(store)
