"""Which engine runs a study's trials - the one place that chooses (the CLI calls these).

``serial`` runs them in this process (``run``), ``ray`` as Ray tasks (``ray_engine``, imported only
when asked for: Ray is an optional extra). Both record the same trials in the same order through the
same commit (``stage1.commit_trial``), with the same TensorFlow threads per trial (the config's
``trial_threads``), so a study may be started on one and resumed on the other.
"""

from __future__ import annotations

from .run import RunData, run_stage1 as serial_stage1, run_stage2 as serial_stage2, select, stage2_jobs
from .store import RunStore
from .trials import EngineOptions

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
