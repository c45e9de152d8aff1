"""What every engine shares about a trial: its seeds, its BatchNorm calibration images, the conditions it
ran under, how a stage-2 record is filed, and the sweep's decisions file. The serial orchestration
(``run``) and the Ray engine (``ray_engine``) both import this module; neither imports the other.

What makes a trial's numbers: its configuration (seeds, data, depth), the TensorFlow thread count
(``RunConfig.trial_threads``, the same for both engines) and the CPU kind. The first two are fixed by
the config; the CPU kind is recorded per trial (``cpu_flags``), because AVX2 and AVX-512 kernels sum
floats in different orders and no setting makes them agree to the last digit. The sweep's decisions
compare validation results with a tie margin (``mstl.sweep.TIE_MARGIN_IMAGES``) so that such
last-digit differences do not move them; ``decisions.json`` says where a tie decided.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import RunConfig
from ..sweep import TIE_MARGIN_IMAGES, compare, sweep_grid, walk

DECISIONS_FILE = "decisions.json"

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

# numpy's names for the instruction sets that change float kernels, as /proc/cpuinfo spells them
_NUMPY_FLAGS = {"AVX": "avx", "AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AVX512BF16": "avx512_bf16",
                "ASIMD": "asimd", "ASIMDDP": "asimddp", "SVE": "sve"}


def stage1_seeds(cfg: RunConfig) -> list[int]:
    return list(cfg.seeds[: max(1, cfg.stage1_seeds)])


def bn_calibration(data) -> np.ndarray | None:
    """Random weights only: 64 fixed bridge images (stratified, independent of size and seed) that set
    the base's BatchNorm statistics, so that every trial's frozen prefix is the same function.
    ``data``: a ``run.RunData``."""
    from ..data.pipeline import gather_array
    from ..data.splits import stratified_order
    if data.cfg.model.weights != "none":
        return None
    pick = stratified_order(data.bridge.labels, data.cfg.data_seed)[:64]
    return gather_array(data.bridge.images, data.bridge.rows[np.sort(pick)])


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The float-relevant instruction sets this process runs with, as the CPU itself reports them
    (numpy asks CPUID): unlike /proc/cpuinfo, true under user-mode emulation too (QEMU's -cpu Haswell
    reports avx2 without avx512f, whatever the host has)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            from ..edge.core.machine import cpu_flags as from_cpuinfo
            return tuple(from_cpuinfo())
    return tuple(sorted({flag for name, flag in _NUMPY_FLAGS.items() if features.get(name)}))


def conditions(threads: int) -> dict[str, Any]:
    """What a trial's record says about where it ran: the TensorFlow threads it really had (0: not set,
    TensorFlow's default of one per core) and the CPU's instruction sets."""
    return {"threads": int(threads), "cpu_flags": list(cpu_flags())}


def add_stage2_record(store, rec: dict, job: tuple) -> None:
    """A stage-2 trial's record, with where its model and its stage-1 network are, into the run store.
    ``job``: (size, seed, stage-1 model path or None, its frozen depth, its stage-1 seed)."""
    size, seed, path, frozen, src_seed = job
    rec.update({"size": int(size), "stage1_model": path, "stage1_seed": src_seed if size else None,
                "model": str(store.stage2_model(size, seed).relative_to(store.dir))})
    if size:
        rec["stage1_frozen"] = frozen
    store.add_stage2(rec)


def versus_best(rec: dict, done: dict[int, dict], grid: list[int], patience: int) -> dict | None:
    """How a newly committed record compared with the chain's best so far (None for the chain's first):
    {"frozen": best's depth, "images": difference in validation images, "outcome": better|tie|worse}."""
    _, best = walk(grid, done, patience)
    if best is None:
        return None
    outcome, diff = compare(rec, best)
    return {"frozen": int(best["frozen"]), "images": diff, "outcome": outcome}


def write_decisions(store, cfg: RunConfig) -> dict:
    """The sweep's decisions per (size, seed) chain, from the records alone: the optimal depth, why the
    chain stopped, and every comparison the tie margin decided. Both engines write it; a study resumed
    on another engine must leave it unchanged."""
    grid, patience = sweep_grid(cfg), cfg.stage1.patience
    chains: dict[tuple[int, int], dict[int, dict]] = {}
    for r in store.trials():
        chains.setdefault((r["size"], r["seed"]), {})[r["frozen"]] = r
    out = []
    for (size, seed), done in sorted(chains.items()):
        nxt, best = walk(grid, done, patience)
        # a tie: the depth ``frozen`` within the margin of the best so far, ``with_frozen``
        ties = [{"frozen": d, "with_frozen": v["frozen"], "images": v["images"]} for d in grid
                if d in done and (v := done[d].get("vs_best")) and v["outcome"] == "tie"]
        out.append({"size": size, "seed": seed, "optimal_frozen": int(best["frozen"]) if best else None,
                    "trials": sorted(done, reverse=True), "finished": nxt is None,
                    "stopped": None if nxt is not None else
                    ("floor reached" if all(d in done for d in grid) else f"{patience} depth(s) without a better one"),
                    "ties": ties, "decided_by_tie": any(t["images"] > 0 for t in ties)})
    doc = {"tie_margin_images": TIE_MARGIN_IMAGES, "trial_threads": cfg.trial_threads, "chains": out}
    store.write_json(DECISIONS_FILE, doc)
    return doc
