"""Stage-1 sweep and stage 2 as Ray tasks (``--engine ray``).

Why Ray core tasks and not Ray Tune: the sweep's only decision - where each size's chain stops - is
the project's own stop rule over its own records (``schedule.Scheduler``), and the run store must
record exactly the trials a serial run records, resumable by the same code. Tune would bring its own
trial bookkeeping, checkpoints and stoppers to keep in step with ours; core tasks are one trial each,
and the driver stays the only writer of ``results.jsonl`` / ``stage2.jsonl``.

What a task gets: the config, the *path* of the decoded-image cache (a memory-mapped .npy: on one
node every task shares its pages; across nodes it must sit on the shared filesystem that holds the run
dir - set MSTL_CACHE_DIR there), its rows, and a pending-model path in the run dir. Activation caches
are built once per cut, under a file lock, in the run dir's cache folder, and read by every task that
needs that cut. A task runs TensorFlow with the config's ``trial_threads`` - the serial engine's count,
so that the two record the same numbers - set before the task touches TensorFlow (a worker process
keeps the count of its first task; every task of a run asks the same); with GPUs it runs in a fresh process
(``max_calls=1``), so its GPU memory is returned when it ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from ..edge.core.progress import say
from ..sweep import optimal_record, sweep_grid
from .schedule import Scheduler
from .stage1 import commit_trial, state_path
from .trials import EngineOptions, add_stage2_record, bn_calibration, conditions, stage1_seeds, write_decisions


# The command Ray starts its workers with, when not this Python: a cluster whose nodes keep it elsewhere,
# or `qemu-x86_64-static -cpu Haswell /path/to/python` to run the trials on an emulated CPU kind
# (benchmarks/ray_sweep.py --emulate-haswell).
WORKER_PYTHON_ENV = "MSTL_RAY_WORKER_PYTHON"


def start(opts: EngineOptions, cfg):
    """Ray, initialised: a local instance sized to the machine, or the cluster at ``opts.address``."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'mstl[ray]'") from None
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                        "MSTL_CACHE_DIR": str(_cache_root())}}
    if os.environ.get(WORKER_PYTHON_ENV):
        env["py_executable"] = os.environ[WORKER_PYTHON_ENV]
    try:
        if opts.address:
            ray.init(address=opts.address, runtime_env=env, log_to_driver=True, configure_logging=False)
        else:
            ray.init(num_cpus=opts.local_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True,
                     configure_logging=False)
    except ConnectionError as e:
        raise RuntimeError(f"--ray-address {opts.address}: no Ray cluster answers there ({e}); start one with "
                           "`ray start --head` on the head machine, or leave --ray-address out for a local one") from None
    res = ray.cluster_resources()
    say(f"ray: {ray.__version__}, {len(ray.nodes())} node(s), {res.get('CPU', 0):.0f} CPU(s), {res.get('GPU', 0):.0f} GPU(s); "
        f"{slots(ray, opts, cfg)} trial(s) at a time ({opts.cpus_per_trial(cfg):g} CPU, {opts.trial_gpus:g} GPU, "
        f"{cfg.trial_threads} TensorFlow thread(s) each)")
    return ray


def _cache_root() -> Path:
    from ..data.cache import default_cache_root
    return default_cache_root().resolve()


def slots(ray, opts: EngineOptions, cfg) -> int:
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // opts.cpus_per_trial(cfg))
    if opts.trial_gpus:
        n = min(n, int(res.get("GPU", 0) // opts.trial_gpus))
        if n == 0:
            raise RuntimeError(f"--trial-gpus {opts.trial_gpus:g}: the Ray cluster has {res.get('GPU', 0):.0f} GPU(s)")
    return max(1, n)


def _array_handle(ray, arr: np.ndarray):
    """A memory-mapped cache travels as its path (tasks map the same pages); anything else via the object store."""
    name = getattr(arr, "filename", None)
    if isinstance(arr, np.memmap) and name and os.path.exists(name) and np.load(name, mmap_mode="r").shape == arr.shape:
        return ("path", str(name))
    return ("ref", ray.put(np.asarray(arr)))


def _open_array(handle):
    kind, value = handle
    if kind == "path":
        return np.load(value, mmap_mode="r")
    import ray
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


# --- inside the workers ------------------------------------------------------------------------------

_STORES: dict = {}  # activation-cache stores of this worker process, reused by its later tasks
_SESSIONS: dict = {}  # stage-1 DepthSession of this worker process, by (config, classes, depth, seed)
_FEATURES: dict = {}  # stage-2 pooled features of this worker process, by frozen network


def _prepare_worker(cfg) -> int:
    """This worker's TensorFlow at the run's threads per trial, deterministic; the threads it has."""
    from ..tf_env import enable_determinism, pin_threads, tf
    threads = pin_threads(cfg.trial_threads)
    if threads != cfg.trial_threads:  # a worker of an earlier run with another count (a shared cluster)
        raise RuntimeError(f"this Ray worker's TensorFlow runs {threads} thread(s), the run asks trial_threads="
                           f"{cfg.trial_threads}; restart the Ray cluster (ray stop; ray start ...) and resume")
    enable_determinism()
    for g in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(g, True)  # fractional --trial-gpus share a card
        except RuntimeError:
            pass
    return threads


def _stage1_task(cfg, run_id: str, images, split, n_classes: int, frozen: int, seed: int, calibration, init_path,
                 prefix_spec, pending: str) -> dict:
    """``run_id``: the run's config hash, computed once by the driver (it digests the weights file)."""
    from ..model import load_classifier
    from ..tf_env import keras
    from .prefix_cache import PrefixCacheStore
    from .stage1 import prefix_getter, run_trial
    from .store import save_model_atomic
    _prepare_worker(cfg)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    arr = _open_array(images)
    prefix = None
    if prefix_spec is not None:
        key = tuple(prefix_spec[k] for k in ("folder", "dtype", "identity"))
        if key not in _STORES:
            _STORES[key] = PrefixCacheStore(Path(prefix_spec["folder"]), prefix_spec["rows"], prefix_spec["dtype"],
                                            prefix_spec["budget"], identity=prefix_spec["identity"], shared=True)
        prefix = prefix_getter(cfg, _STORES[key], arr, seed)
    init = load_classifier(init_path) if init_path else None
    session = None
    if init is None:  # restart mode: this worker's built model for the depth serves its later sizes too
        from .stage1 import DepthSession
        key = (run_id, n_classes, frozen, seed)
        if key not in _SESSIONS:
            _SESSIONS.clear()  # one depth's model at a time: the sweep descends, an old depth rarely returns
            keras.backend.clear_session()
            _SESSIONS[key] = DepthSession(cfg, n_classes, frozen, seed, calibration, prefix)
        session = _SESSIONS[key]
    model, rec = run_trial(cfg, arr, split, n_classes, frozen, seed, init, verbose=False,
                           calibration=calibration, prefix=prefix, session=session)
    save_model_atomic(model, Path(pending))
    if session is None:
        keras.backend.clear_session()
    rec.update({"engine": "ray", "node": socket.gethostname()})  # threads, cpu_flags: run_trial's own
    return rec


def _stage2_task(cfg, images, splits, seed: int, stage1_path, out: str) -> dict:
    from ..tf_env import keras
    from .stage2 import train_stage2
    from .store import save_model_atomic
    threads = _prepare_worker(cfg)
    while len(_FEATURES) > 2:  # a worker serves many sizes over a run: keep the latest few networks' features
        _FEATURES.pop(next(iter(_FEATURES)))
    model, rec = train_stage2(cfg, _open_array(images), splits, seed, stage1_path, cache=cfg.cache,
                              feature_memo=_FEATURES)
    save_model_atomic(model, Path(out))
    keras.backend.clear_session()
    rec.update({"engine": "ray", "node": socket.gethostname(), **conditions(threads)})
    return rec


# --- the driver --------------------------------------------------------------------------------------

def _remote(ray, fn, opts: EngineOptions, cfg):
    # GPU tasks get a fresh process each: TensorFlow returns GPU memory only when its process ends.
    return ray.remote(num_cpus=opts.cpus_per_trial(cfg), num_gpus=opts.trial_gpus, max_calls=1 if opts.trial_gpus else 0,
                      max_retries=0)(fn)


def run_stage1(store, data, opts: EngineOptions) -> dict[tuple[int, int], dict]:
    """The sweep of every (seed, size) chain as Ray tasks; records committed by this driver only, in the
    order a serial sweep commits them. Returns the best record per (size, seed)."""
    cfg = data.cfg
    ray = start(opts, cfg)
    sizes, seeds = sorted(data.splits), stage1_seeds(cfg)
    keys = [(seed, size) for seed in seeds for size in sizes]
    committed = {k: {r["frozen"]: r for r in store.trials() if (r["seed"], r["size"]) == k} for k in keys}
    grid = sweep_grid(cfg)
    sched = Scheduler({k: grid for k in keys}, committed, cfg.stage1.patience,
                      continue_mode=cfg.stage1.mode == "continue", lookahead=opts.lookahead)
    sweep = _RaySweep(ray, store, data, opts, sched)
    say(f"stage 1 on Ray: {len(keys)} chain(s) (sizes {sizes}, seed(s) {seeds}), depths {grid[0]}..{grid[-1]}, "
        f"look-ahead {sched.lookahead}")
    t0 = time.monotonic()
    sweep.run()
    wall = time.monotonic() - t0
    say(f"stage 1 on Ray done in {wall:.0f}s: {sweep.n_done} trial(s) run, {sched.launched} launched, "
        f"{sched.wasted} look-ahead trial(s) beyond a stopping point")
    if sweep.prefix_spec is not None:
        shutil.rmtree(store.dir / "cache", ignore_errors=True)
    store.write_json("ray_stage1.json", {"wall_s": round(wall, 2), "launched": sched.launched, "ran": sweep.n_done,
                                         "wasted": sched.wasted, "slots": sweep.n_slots, "lookahead": sched.lookahead,
                                         "trial_cpus": opts.cpus_per_trial(cfg), "trial_gpus": opts.trial_gpus,
                                         "trial_threads": cfg.trial_threads})
    write_decisions(store, cfg)
    best = {}
    for seed, size in keys:
        best[(size, seed)] = optimal_record([r for r in store.trials() if (r["seed"], r["size"]) == (seed, size)])
        say(f"stage 1: size {size}: optimal frozen depth {best[(size, seed)]['frozen']}")
    return best


class _RaySweep:
    """One stage-1 sweep on Ray: launches what the scheduler asks for, collects results as they come,
    commits them in serial order and cancels look-ahead trials beyond a stopping point."""

    def __init__(self, ray, store, data, opts: EngineOptions, sched: Scheduler):
        cfg = data.cfg
        self.ray, self.store, self.data, self.cfg, self.sched = ray, store, data, cfg, sched
        self.pending_dir = store.dir / "stage1" / "pending"
        shutil.rmtree(self.pending_dir, ignore_errors=True)  # results of a killed run's tasks: never committed
        self.pending_dir.mkdir(parents=True)
        self.images = _array_handle(ray, data.bridge.images)
        self.calibration = bn_calibration(data)
        self.run_id = store.config_hash()
        self.prefix_spec = None
        if cfg.cache:
            rows = np.concatenate([np.concatenate([s.train, s.val]) for s in data.splits.values()])
            self.prefix_spec = {"folder": str(store.dir / "cache"), "rows": rows, "dtype": cfg.prefix_cache,
                                "budget": cfg.cache_budget_gb * 1e9, "identity": self.run_id}
        self.task = _remote(ray, _stage1_task, opts, cfg)
        self.n_slots = slots(ray, opts, cfg)
        self.running: dict = {}  # ObjectRef -> (key, depth, pending file)
        self.files: dict = {}  # (key, depth) -> pending file of a finished, not yet committed trial
        self.n_done = 0

    def run(self) -> None:
        try:
            while not self.sched.finished:
                self._launch()
                if not self.running:
                    raise RuntimeError("stage 1 on Ray: no trial to run although the sweep is not finished")
                self._collect_one()
                self._commit()
                self._cancel()
        finally:
            for ref in self.running:
                self.ray.cancel(ref, force=True)
            shutil.rmtree(self.pending_dir, ignore_errors=True)

    def _launch(self) -> None:
        cfg, sched = self.cfg, self.sched
        for key, depth in sched.launches(self.n_slots - len(self.running)):
            seed, size = key
            init = None
            if cfg.stage1.mode == "continue" and sched.chains[key].committed:
                init = str(state_path(self.store, size, min(sched.chains[key].committed), seed))
            pending = self.pending_dir / f"size-{size}-seed-{seed}-frozen-{depth}.keras"
            ref = self.task.remote(cfg, self.run_id, self.images, self.data.splits[size], len(self.data.bridge.classes),
                                   depth, seed, self.calibration, init, self.prefix_spec, str(pending))
            self.running[ref] = (key, depth, pending)
            say(f"trial: size {size} frozen {depth} (seed {seed}) started; {len(self.running)} running")

    def _collect_one(self) -> None:
        ray = self.ray
        ready, _ = ray.wait(list(self.running), num_returns=1)
        key, depth, pending = self.running.pop(ready[0])
        try:
            rec = ray.get(ready[0])
        except ray.exceptions.TaskCancelledError:
            return
        except ray.exceptions.RayTaskError as e:
            raise RuntimeError(f"stage-1 trial size {key[1]} frozen {depth} seed {key[0]} failed on Ray: "
                               f"{e.cause if getattr(e, 'cause', None) else e}") from None
        rec["size"] = int(key[1])
        self.n_done += 1
        self.files[(key, depth)] = pending
        self.sched.done(key, depth, rec)

    def _commit(self) -> None:
        for k, d, r in self.sched.commits():
            seed, size = k
            done = {f: x for f, x in self.sched.chains[k].committed.items() if f != d}
            commit_trial(self.cfg, self.store, self.files.pop((k, d)), r, done, size, d, seed,
                         label=f"size {size} frozen {d} (seed {seed}) ")

    def _cancel(self) -> None:
        for k, d in self.sched.cancels():
            for ref, (k2, d2, _) in list(self.running.items()):
                if (k2, d2) == (k, d):
                    self.ray.cancel(ref, force=True)
                    self.running.pop(ref)
            say(f"  look-ahead trial size {k[1]} frozen {d} cancelled: size {k[1]} stopped above it")


def run_stage2(store, data, opts: EngineOptions, jobs: list[tuple[int, int, str | None, int | None, int | None]]) -> None:
    """Stage-2 trials (size x seed, and the control) as parallel Ray tasks; records written here only.
    ``jobs``: (size, seed, stage-1 model path or None, its frozen depth, its stage-1 seed)."""
    cfg = data.cfg
    ray = start(opts, cfg)
    task = _remote(ray, _stage2_task, opts, cfg)
    images = _array_handle(ray, data.target.images)
    n_slots = slots(ray, opts, cfg)
    queue = list(jobs)
    running: dict = {}
    t0 = time.monotonic()
    while queue or running:
        while queue and len(running) < n_slots:
            job = queue.pop(0)
            size, seed, path = job[:3]
            ref = task.remote(cfg, images, data.target_splits, seed, path, str(store.stage2_model(size, seed)))
            running[ref] = job
        ready, _ = ray.wait(list(running), num_returns=1)
        job = running.pop(ready[0])
        size, seed = job[:2]
        try:
            rec = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            for ref in running:
                ray.cancel(ref, force=True)
            raise RuntimeError(f"stage-2 trial size {size} seed {seed} failed on Ray: "
                               f"{e.cause if getattr(e, 'cause', None) else e}") from None
        add_stage2_record(store, rec, job)
        what = f"size {size}" if size else "control"
        say(f"stage 2: {what}, seed {seed}: test accuracy {rec['accuracy']:.3f} in {rec['seconds']:.1f}s "
            f"({len(running)} running, {len(queue)} queued)")
    say(f"stage 2 on Ray done in {time.monotonic() - t0:.0f}s")

