"""Stage 2: everything frozen, the head replaced by a new binary one, only the head trains.

Since nothing below the head changes, the cached path computes each target image's pooled features
once and trains the head on them; ``cache=False`` trains the same head through the whole network
(same seed, same data order, same result - up to float rounding).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..config import RunConfig
from ..data.pipeline import gather_array, make_dataset
from ..edge.core.metrics import classification_report
from ..model import POOL_NAME, build_classifier, compile_for_training, load_classifier, with_new_head
from ..tf_env import keras, tf
from . import frozen_pass
from .prepare import TargetSplits


class StopAtTrainAccuracy(keras.callbacks.Callback):
    """Stop as soon as an epoch's training accuracy reaches the threshold (the paper's rule)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.reached_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get("accuracy", 0.0) >= self.threshold:
            self.reached_at = epoch + 1
            self.model.stop_training = True


def _features(model, images: np.ndarray, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    """Pooled features of the given image rows: one inference pass through the frozen network - in
    LiteRT for large sets (frozen_pass.py), else as a compiled Keras call traced once for any batch
    size (a retrace for the last, smaller batch cost ~0.5 s)."""
    extractor = keras.Model(model.inputs, model.get_layer(POOL_NAME).output)

    def keras_pass(net, rows):
        spec = tf.TensorSpec((None,) + tuple(images.shape[1:]), tf.float32)
        call = tf.function(lambda x: net(x, training=False), input_signature=[spec])
        out = [call(gather_array(images, rows[s:s + batch])).numpy() for s in range(0, len(rows), batch)]
        return np.concatenate(out) if out else np.zeros((0, net.output.shape[-1]), np.float32)
    return frozen_pass.run(extractor, images, np.asarray(rows), keras_pass)


def _head_model(model, dim: int):
    """A model of just the new head, sharing its layers (and so its weights) with ``model``."""
    x = inp = keras.Input((dim,), name="features")
    for layer in model.layers:
        if layer.name.startswith("target_head"):
            x = layer(x)
    return keras.Model(inp, x)


def _head_probs(model, features: np.ndarray) -> np.ndarray:
    """The head at inference (dropout inactive): softmax(features @ W + b), without a traced predict."""
    kernel, bias = model.get_layer("target_head").get_weights()
    logits = features.astype(np.float64) @ kernel + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def train_stage2(cfg: RunConfig, images: np.ndarray, t: TargetSplits, seed: int, stage1_path: str | None,
                 cache: bool = True, feature_memo: dict | None = None) -> tuple[Any, dict]:
    """Train the binary head on the target; returns (complete classifier, record).

    ``feature_memo``: pooled features by frozen network, shared across calls - a stage-1 model's
    features do not depend on the stage-2 seed, so with several seeds they are computed once."""
    s2 = cfg.stage2
    t0 = time.monotonic()
    keras.utils.set_random_seed(seed)
    source = (load_classifier(stage1_path) if stage1_path else
              build_classifier(cfg.model, cfg.data.image_size, 2, cfg.data.scaling,
                               calibration_images=gather_array(images, t.train[:64])))
    model = with_new_head(source, 2, cfg.model.dropout)
    stop = StopAtTrainAccuracy(s2.stop_train_accuracy)
    t_train = time.monotonic()
    reused = None
    if cache:
        # the control's network is the same for every seed unless its weights are random (seeded)
        key = stage1_path or (f"control:{cfg.model.weights}" if cfg.model.weights != "none" else None)
        memo = feature_memo if feature_memo is not None and key is not None else {}
        reused = key in memo
        hist, p_val, p_test = _fit_on_features(cfg, model, images, t, seed, stop, memo, key)
    else:
        hist, p_val, p_test = _fit_end_to_end(cfg, model, images, t, seed, stop)
    record = _record(t, seed, p_val, p_test, hist.history, stop)
    record.update({"train_seconds": round(time.monotonic() - t_train, 2), "embedding_cache": bool(cache),
                   "features_reused": bool(reused), "seconds": round(time.monotonic() - t0, 2)})
    return model, record


def _steps(cfg: RunConfig, t: TargetSplits) -> int:
    # One call per epoch on both paths (same math): on features a step is a tiny matrix product, and
    # per-call overhead would dominate it.
    return max(1, -(-len(t.train) // cfg.stage2.batch_size))


def _fit_on_features(cfg, model, images, t: TargetSplits, seed: int, stop, memo: dict, key):
    """The head trained on the frozen network's pooled features (computed once per network)."""
    s2 = cfg.stage2
    n_tr, n_va = len(t.train), len(t.val)
    if key not in memo:
        memo[key] = _features(model, images, np.concatenate([t.train, t.val, t.test]))
    feats = memo[key]
    f_train = feats[:n_tr]
    head = _head_model(model, f_train.shape[1])
    compile_for_training(head, s2.learning_rate, _steps(cfg, t))
    ds = tf.data.Dataset.from_tensor_slices((f_train, t.y_train)).shuffle(len(f_train), seed=seed).batch(s2.batch_size)
    hist = head.fit(ds, epochs=s2.max_epochs, verbose=0, callbacks=[stop])
    probs = _head_probs(model, feats[n_tr:])
    return hist, probs[:n_va], probs[n_va:]


def _fit_end_to_end(cfg, model, images, t: TargetSplits, seed: int, stop):
    """The plain path (no feature cache): the whole classifier fitted with its base frozen."""
    s2 = cfg.stage2
    compile_for_training(model, s2.learning_rate, _steps(cfg, t))
    ds = make_dataset(images, t.train, t.y_train, s2.batch_size, shuffle=True, seed=seed)
    hist = model.fit(ds, epochs=s2.max_epochs, verbose=0, callbacks=[stop])
    p_val = model.predict(make_dataset(images, t.val, t.y_val, 64), verbose=0)
    p_test = model.predict(make_dataset(images, t.test, t.y_test, 64), verbose=0)
    return hist, p_val, p_test


def _record(t: TargetSplits, seed: int, p_val, p_test, h: dict, stop) -> dict:
    names = t.mapping.names
    test = classification_report(t.y_test, p_test, names)
    val = classification_report(t.y_val, p_val, names) if len(t.val) else {"accuracy": None, "roc_auc": None, "n": 0}
    return {
        "seed": int(seed),
        "accuracy": test["accuracy"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
        "sensitivity": test["sensitivity"], "specificity": test["specificity"], "roc_auc": test["roc_auc"],
        "balanced_accuracy": test["balanced_accuracy"], "ece": test["ece"],
        "confusion_matrix": test["confusion_matrix"], "n_test": test["n"],
        # per-image predictions on the test split (in target_test.tsv order): the paired tests of the
        # claims compare models image by image
        "test_pred": "".join(str(int(k)) for k in np.asarray(p_test).argmax(1)),
        "majority_baseline": float(max(np.mean(t.y_test == k) for k in range(len(names)))),
        "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"], "n_val": val["n"],
        "train_accuracy": float(h["accuracy"][-1]), "epochs": len(h["accuracy"]),
        "stopped_at_threshold": stop.reached_at is not None, "classes": names,
    }


def choose_deployable(records: list[dict]) -> dict:
    """Pick the stage-2 model to deploy: highest mean validation accuracy over seeds, then validation
    AUC, then the smaller bridge; the control (no bridge, size 0) is chosen when it is best. Without a
    validation split (the paper's protocol) the choice is made on the test split - as the paper did -
    and the record says that its test figure is then optimistic."""
    by_size: dict[int, list[dict]] = {}
    for r in records:
        by_size.setdefault(r["size"], []).append(r)
    if not any(s > 0 for s in by_size):
        raise ValueError("no stage-2 result for any bridge size yet")
    on_val = all(r.get("n_val") and r.get("val_accuracy") is not None for r in records)
    acc_key, auc_key = ("val_accuracy", "val_roc_auc") if on_val else ("accuracy", "roc_auc")
    split = "validation" if on_val else "TEST"

    def key(size):
        rs = by_size[size]
        return (np.mean([r[acc_key] for r in rs]), np.mean([r[auc_key] or 0 for r in rs]), -size if size else -10**12)

    size = max(by_size, key=key)
    best_seed = max(by_size[size], key=lambda r: (r[acc_key], r[auc_key] or 0))
    mean_acc = float(np.mean([r[acc_key] for r in by_size[size]]))
    what = "the control (no bridge)" if size == 0 else f"bridge size {size}"
    why = (f"{what}: highest mean {split} accuracy ({mean_acc:.3f} over {len(by_size[size])} training seed(s) of this data draw) among "
           f"{sum(1 for s in by_size if s)} bridge size(s) and the control; ties broken by {split} ROC AUC, then the smaller bridge")
    out = {"size": size, "seed": best_seed["seed"], "chosen_on": split.lower(), f"{split.lower()}_accuracy": mean_acc,
           "why": why, "model": best_seed.get("model")}
    if not on_val:
        out["warning"] = ("no validation split: the model was chosen on the test split, as the paper did, so its "
                          "test accuracy is optimistic (it is the best of several candidates on the same images)")
    return out
