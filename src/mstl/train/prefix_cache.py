"""Frozen-prefix activation cache for stage 1.

Every trial of a sweep starts from the same weights, and frozen layers (BatchNorm included: Keras runs
a non-trainable BatchNormalization in inference mode) compute a fixed function of the image. Unfreezing
goes from the top, so layers below a trial's depth are never trained in any mode. Their output at a
single-tensor cut is computed once per image, stored in a memory-mapped file, and the trial trains
only the part above the cut on it - the same computation as the plain path, without the prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..edge.core.progress import progress_bar, say, warn
from ..tf_env import keras, tf
from ..model import BASE_NAME, base_of


def _edges(base) -> list[tuple[int, int]]:
    index = {layer.name: i for i, layer in enumerate(base.layers)}
    edges = []
    for j, layer in enumerate(base.layers):
        for node in layer._inbound_nodes[:1]:  # the node that wired it into the base
            for t in node.input_tensors:
                edges.append((index[t._keras_history.operation.name], j))
    return edges


def cut_points(base) -> list[int]:
    """Layer indices whose output is the only tensor that crosses from below to above."""
    edges = _edges(base)
    n = len(base.layers)
    return [i for i in range(1, n - 1) if all(k == i for k, j in edges if k <= i < j)]


def cut_for(frozen: int, cuts: list[int]) -> int | None:
    """The highest cut whose layers are all frozen (index <= frozen - 1), or None."""
    ok = [c for c in cuts if c <= frozen - 1]
    return max(ok) if ok else None


def upper_model(model, cut: int) -> "keras.Model":
    """The classifier from the cut's activation up, sharing layers (and weights) with ``model``."""
    base = base_of(model)
    layers = base.layers
    inp = keras.Input(tuple(layers[cut].output.shape[1:]), name=f"cut_{cut}")
    tensors = {layers[cut].name: inp}
    bn_inference = _base_called_in_inference(model)
    for layer in layers[cut + 1:]:
        node = layer._inbound_nodes[0]
        args = [tensors[t._keras_history.operation.name] for t in node.input_tensors]
        x = args[0] if len(args) == 1 else args
        if bn_inference and isinstance(layer, keras.layers.BatchNormalization):
            tensors[layer.name] = layer(x, training=False)
        else:
            tensors[layer.name] = layer(x)
    x = tensors[layers[-1].name]
    after = model.layers[[l.name for l in model.layers].index(BASE_NAME) + 1:]
    for layer in after:  # pool, dropout, head: a chain
        x = layer(x)
    return keras.Model(inp, x, name=f"upper_from_{cut}")


def _base_called_in_inference(model) -> bool:
    node = base_of(model)._inbound_nodes[0]
    return node.arguments.kwargs.get("training", None) is False


def prefix_model(model, cut: int) -> "keras.Model":
    base = base_of(model)
    sub = keras.Model(base.input, base.layers[cut].output)
    x = model.get_layer("scaling")(model.input)
    return keras.Model(model.input, sub(x))


@contextlib.contextmanager
def _lock(path: Path, enabled: bool):
    """An exclusive lock on ``path`` (released by the kernel if its holder dies), or nothing."""
    if not enabled:
        yield
        return
    import fcntl
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class ActivationCache:
    cut: int
    array: np.ndarray  # (n_rows, ...) activations, memory-mapped
    rows: np.ndarray  # image-cache row of each stored activation, sorted
    path: Path

    def positions(self, image_rows: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.rows, image_rows)
        if np.any(pos >= len(self.rows)) or np.any(self.rows[np.minimum(pos, len(self.rows) - 1)] != image_rows):
            raise KeyError("rows missing from the activation cache")
        return pos

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


class PrefixCacheStore:
    """Activation caches of one run, one cut at a time: a deeper cut is made on demand and the one above
    it is dropped (the sweep only descends)."""

    def __init__(self, folder: Path, rows: np.ndarray, dtype: str, budget_bytes: float, identity: str = "",
                 shared: bool = False):
        """``shared``: several processes (Ray tasks) use the folder at once, at different depths - a cut is
        built by one of them under a file lock, and no cut is dropped until the driver clears the folder."""
        self.folder = folder
        self.shared = shared
        self.rows = np.unique(rows)
        # What the cached activations depend on: the run's configuration and data (its config hash) and
        # the exact image rows. A cache file made under another identity is rebuilt, never reused by name.
        import hashlib
        self.identity = hashlib.sha256(identity.encode() + self.rows.astype(np.int64).tobytes()).hexdigest()[:16]
        self.dtype = np.dtype(dtype)
        self.budget = budget_bytes
        self.current: ActivationCache | None = None

    def size_for(self, model, cut: int) -> int:
        shape = base_of(model).layers[cut].output.shape[1:]
        return int(np.prod(shape)) * len(self.rows) * self.dtype.itemsize

    def get(self, model, cut: int, key: str, images: np.ndarray) -> ActivationCache | None:
        """The cache for ``cut`` (built from ``model``'s prefix), or None when it would not fit the budget."""
        if self.current is not None and self.current.cut == cut and self.current.path.name.startswith(key):
            return self.current
        need = self.size_for(model, cut)
        if need > self.budget:
            warn(f"activation cache at layer {cut} would take {need / 1e9:.2f} GB, over the "
                 f"{self.budget / 1e9:.2f} GB budget: this trial trains without it (slower, same result); "
                 "raise --cache-budget-gb or use --prefix-cache float16")
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}-cut{cut}-{self.dtype.name}.npy"
        meta = path.with_suffix(".json")
        with _lock(self.folder / f".{path.stem}.lock", self.shared):
            if not meta.exists() or not path.exists() or json.loads(meta.read_text()).get("identity") != self.identity:
                self._build(model, cut, images, path, meta)
        array = np.load(path, mmap_mode="r")
        if not self.shared:
            self._drop_others(path)
        self.current = ActivationCache(cut, array, self.rows, path)
        return self.current

    def _build(self, model, cut: int, images: np.ndarray, path: Path, meta: Path) -> None:
        from ..data.pipeline import gather_array
        t0 = time.monotonic()
        prefix = prefix_model(model, cut)
        shape = tuple(int(d) for d in prefix.output.shape[1:])
        tmp = path.with_name(f".{path.name}.partial{os.getpid()}")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(len(self.rows),) + shape)
        from . import frozen_pass
        runner = frozen_pass.litert_runner(prefix, images, len(self.rows))  # inference runtime for large sets
        batch = frozen_pass.BATCH if runner is not None else 64
        if runner is None:
            # A compiled call: eager execution of ~100 layers per batch ran the pass at half the speed.
            spec = tf.TensorSpec((None,) + tuple(images.shape[1:]), tf.float32)
            call = tf.function(lambda x: prefix(x, training=False), input_signature=[spec])
            runner = lambda part: call(gather_array(images, part)).numpy()  # noqa: E731
        with progress_bar(f"activation cache at layer {cut} ({base_of(model).layers[cut].name})", len(self.rows)) as adv:
            for s in range(0, len(self.rows), batch):
                part = self.rows[s:s + batch]
                out[s:s + batch] = runner(part).astype(self.dtype)
                adv(len(part))
        out.flush()
        del out
        os.replace(tmp, path)
        meta.write_text(json.dumps({"cut": cut, "rows": len(self.rows), "shape": shape, "dtype": self.dtype.name,
                                    "identity": self.identity,
                                    "seconds": round(time.monotonic() - t0, 2)}))
        say(f"  activation cache at layer {cut}: {len(self.rows)} x {shape} {self.dtype.name} = "
            f"{path.stat().st_size / 1e6:.1f} MB in {time.monotonic() - t0:.1f}s")

    def _drop_others(self, keep: Path) -> None:
        for p in self.folder.glob("*-cut*.npy"):
            if p != keep:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)

    def clear(self) -> None:
        self.current = None
        shutil.rmtree(self.folder, ignore_errors=True)
