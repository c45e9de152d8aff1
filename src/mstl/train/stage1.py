"""Stage 1: fine-tune on the bridge at one dataset size while unfreezing the base from the top.

A trial is a pure function of (config, data subset, frozen depth, seed) -> one record (+ its model);
the sweep only decides which depth comes next, from the records alone, so it can be resumed - or its
trials spread over machines - without any other state.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..config import RunConfig
from ..data.pipeline import make_dataset
from ..data.splits import balanced_class_weights
from ..model import base_of, build_classifier, compile_for_training, freeze, load_classifier
from ..edge.core.progress import say
from ..tf_env import keras, tf
from .prepare import SplitRows
from .prefix_cache import PrefixCacheStore, cut_for, cut_points, upper_model
from .store import RunStore, save_model_atomic
from ..sweep import next_depth, optimal_record, sweep_grid
from .trials import conditions, versus_best


STEPS_PER_EXECUTION = 8  # both paths, cached or not: results are the same, per-batch overhead is not


class EpochLog(keras.callbacks.Callback):
    def __init__(self, label: str, epochs: int):
        super().__init__()
        self.label, self.epochs, self.t0 = label, epochs, time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        el = time.monotonic() - self.t0
        eta = el / (epoch + 1) * (self.epochs - epoch - 1)
        say(f"  {self.label} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.3f} "
            f"acc {logs.get('accuracy', float('nan')):.3f} val_acc {logs.get('val_accuracy', float('nan')):.3f} "
            f"({el:.0f}s, at most {eta:.0f}s left)")


def strategy():
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


class DepthSession:
    """One built, frozen, cached and compiled model for a depth, shared by every size at that depth.

    Before each size, every variable of the model (weights, BatchNorm statistics, dropout seed state)
    and of the optimizer goes back to its value right after the build, so each trial starts exactly
    where a fresh build with the same seed starts - the trial stays a pure function - while the build,
    the weight loading and the tracing of the training step are paid once per depth, not once per size.
    """

    def __init__(self, cfg: RunConfig, n_classes: int, frozen: int, seed: int, calibration, prefix,
                 init_model=None):
        """``init_model``: continue mode's model from the previous depth, used instead of a fresh build."""
        keras.utils.set_random_seed(seed)
        with strategy().scope():
            self.model = init_model if init_model is not None else build_classifier(
                cfg.model, cfg.data.image_size, n_classes, cfg.data.scaling, calibration_images=calibration)
            freeze(self.model, frozen)
            self.cache = prefix(self.model, frozen) if prefix is not None else None
            self.train_model = upper_model(self.model, self.cache.cut) if self.cache is not None else self.model
            compile_for_training(self.train_model, cfg.stage1.learning_rate, STEPS_PER_EXECUTION)
            self.train_model.optimizer.build(self.train_model.trainable_variables)
        self._vars = list(self.model.variables) + list(self.train_model.optimizer.variables)
        self._start = [v.numpy() for v in self._vars]

    def reset(self) -> None:
        for v, value in zip(self._vars, self._start):
            v.assign(value)


def run_trial(cfg: RunConfig, images: np.ndarray, split: SplitRows, n_classes: int, frozen: int, seed: int,
              init_model=None, label: str = "", verbose: bool = True, calibration: np.ndarray | None = None,
              prefix: Callable | None = None, session: DepthSession | None = None) -> tuple[Any, dict]:
    """Train one depth. ``prefix(model, frozen)`` may return an ActivationCache for the frozen prefix:
    the trial then trains the layers above the cut on cached activations (same computation, less of
    it). A ``session`` supplies an already built model for this depth, reset to its starting state."""
    s1 = cfg.stage1
    t0 = time.monotonic()
    if session is None:
        session = DepthSession(cfg, n_classes, frozen, seed, calibration, prefix, init_model)
    session.reset()
    model, train_model, cache = session.model, session.train_model, session.cache
    keras.utils.set_random_seed(seed)
    t_cache = time.monotonic() - t0
    if cache is not None:
        source, tr, va = cache.array, cache.positions(split.train), cache.positions(split.val)
    else:
        source, tr, va = images, split.train, split.val
    train = make_dataset(source, tr, split.y_train, s1.batch_size, shuffle=True, seed=seed)
    val = make_dataset(source, va, split.y_val, s1.batch_size)
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=s1.early_stopping_patience,
                                               restore_best_weights=True)]
    if verbose:
        callbacks.append(EpochLog(label, s1.epochs))
    hist = train_model.fit(train, validation_data=val, epochs=s1.epochs, verbose=0, callbacks=callbacks,
                           class_weight=balanced_class_weights(split.y_train, n_classes))
    h = hist.history
    best_epoch = int(np.argmin(h["val_loss"]))
    record = {
        "size": int(len(split.train) + len(split.val)), "frozen": int(frozen), "seed": int(seed),
        "mode": s1.mode,
        "val_accuracy": float(h["val_accuracy"][best_epoch]), "val_loss": float(h["val_loss"][best_epoch]),
        "train_accuracy": float(h["accuracy"][best_epoch]), "train_loss": float(h["loss"][best_epoch]),
        "epochs": len(h["loss"]), "best_epoch": best_epoch + 1,
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "n_train": int(len(split.train)), "n_val": int(len(split.val)),
        "cache_cut": cache.cut if cache is not None else None,
        "seconds": round(time.monotonic() - t0, 2), "setup_seconds": round(t_cache, 2),
        **conditions(tf.config.threading.get_intra_op_parallelism_threads()),
    }
    return model, record


def prefix_getter(cfg: RunConfig, prefix_store: PrefixCacheStore | None, images: np.ndarray, seed: int) -> Callable:
    """``prefix(model, frozen)`` for ``run_trial``: the activation cache of the deepest cut below ``frozen``."""
    cuts: list[int] | None = None

    def prefix(model, frozen):
        nonlocal cuts
        if prefix_store is None:
            return None
        if cuts is None:
            cuts = cut_points(base_of(model))
        cut = cut_for(frozen, cuts)
        key = "pretrained" if cfg.model.weights != "none" else f"seed{seed}"
        return prefix_store.get(model, cut, key, images) if cut is not None else None
    return prefix


def sweep(cfg: RunConfig, store: RunStore, images: np.ndarray, splits: dict[int, SplitRows], n_classes: int,
          seed: int, calibration: np.ndarray | None = None, prefix_store: PrefixCacheStore | None = None) -> dict[int, dict]:
    """Run (or resume) the unfreezing sweep of every size, depth by depth: each depth's frozen-prefix
    cache then serves all sizes before the sweep moves down. Each size stops at its own peak.
    Returns the best record per size."""
    grid = sweep_grid(cfg)
    sizes = sorted(splits)
    prefix = prefix_getter(cfg, prefix_store, images, seed)
    n_trials = 0
    t0 = time.monotonic()
    share = cfg.stage1.mode == "restart" and prefix_store is not None
    for depth in grid:
        session = None
        for size in sizes:
            done = {r["frozen"]: r for r in store.trials() if r["size"] == size and r["seed"] == seed}
            if next_depth(grid, done, cfg.stage1.patience) != depth:
                continue
            init = None
            if cfg.stage1.mode == "continue" and done:
                init = load_classifier(state_path(store, size, min(done), seed))
            label = f"size {size} frozen {depth}"
            eta = ""
            if n_trials:
                eta = f"; {(time.monotonic() - t0) / n_trials:.0f}s per trial so far"
            say(f"trial: {label} (seed {seed}; {len(done) + 1} of at most {len(grid)} for this size{eta})")
            if share and session is None:
                session = DepthSession(cfg, n_classes, depth, seed, calibration, prefix)
            model, rec = run_trial(cfg, images, splits[size], n_classes, depth, seed, init, label,
                                   calibration=calibration, prefix=prefix, session=session)
            rec.update({"size": int(size), "engine": "serial"})
            commit_trial(cfg, store, model, rec, done, size, depth, seed)
            n_trials += 1
        session = None
        keras.backend.clear_session()
    best = {}
    for size in sizes:
        records = [r for r in store.trials() if r["size"] == size and r["seed"] == seed]
        best[size] = optimal_record(records)
    return best


def commit_trial(cfg, store: RunStore, model, rec: dict, done: dict, size: int, depth: int, seed: int,
                 label: str = "") -> None:
    """Record a finished trial of the (size, seed) chain whose committed records are ``done``, with how
    it compared to the best so far (``vs_best``: a tie within the margin is named). Model files first,
    then the record: a kill in between leaves a stray file, never a record without its model.
    ``model``: the trained model, or the file a worker saved it to. Every engine commits through here."""
    rec["vs_best"] = versus_best(rec, done, sweep_grid(cfg), cfg.stage1.patience)
    is_best = rec["vs_best"] is None or rec["vs_best"]["outcome"] == "better"
    if cfg.stage1.mode == "continue":
        save_model_atomic(model, state_path(store, size, depth, seed))
    if is_best:
        save_model_atomic(model, store.stage1_model(size, depth, seed))
    store.add_trial(rec)
    _cleanup(store, size, seed, keep_best=optimal_record(list(done.values()) + [rec])["frozen"],
             keep_state=depth if cfg.stage1.mode == "continue" else None)
    vs = rec["vs_best"]
    tie = f"  (tie with frozen {vs['frozen']}: {vs['images']:+g} image(s), within the margin)" \
        if vs and vs["outcome"] == "tie" else ""
    say(f"  {label}-> val_acc {rec['val_accuracy']:.3f} val_loss {rec['val_loss']:.3f} in {rec['seconds']:.0f}s"
        + (f" (cached prefix to layer {rec['cache_cut']})" if rec.get("cache_cut") is not None else "")
        + ("  (best so far)" if is_best else "") + tie)


def ensure_best_model(cfg: RunConfig, store: RunStore, images, split: SplitRows, size: int, n_classes: int,
                      seed: int, calibration: np.ndarray | None = None) -> tuple[str, int]:
    """(path, frozen depth) of the best stage-1 model for a size; retrains its trial if the file went missing."""
    records = [r for r in store.trials() if r["size"] == size and r["seed"] == seed]
    best = optimal_record(records)
    path = store.stage1_model(size, best["frozen"], seed)
    if not path.exists():
        if cfg.stage1.mode == "continue":
            raise FileNotFoundError(f"{path} is missing and a continue-mode model cannot be re-trained alone; "
                                    "rerun with --restart")
        say(f"stage-1 model {path} missing: re-training its trial")
        model, _ = run_trial(cfg, images, split, n_classes, best["frozen"], seed, label=f"size {size} (rebuild)",
                             calibration=calibration)
        save_model_atomic(model, path)
    return str(path), int(best["frozen"])


def state_path(store: RunStore, size: int, frozen: int, seed: int):
    """Continue mode: the model a depth ended with, where the next depth of the chain starts from."""
    return store.stage1_model(size, frozen, seed).with_name(f"state-{frozen}.keras")


def _cleanup(store: RunStore, size: int, seed: int, keep_best: int, keep_state: int | None) -> None:
    folder = store.stage1_model(size, keep_best, seed).parent
    for p in folder.glob("*.keras"):
        if p.name.startswith("frozen-") and p.name != f"frozen-{keep_best}.keras":
            p.unlink(missing_ok=True)
        elif p.name.startswith("state-") and p.name != f"state-{keep_state}.keras":
            p.unlink(missing_ok=True)
