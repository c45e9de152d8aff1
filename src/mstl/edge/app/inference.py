"""Thread-safe inference for the app: a pool of runtimes, each used by one request at a time."""

from __future__ import annotations

import os
import queue
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cards import card_of, file_mismatch, file_state, unverified_reason
from ..core.images import open_image
from ..core.preprocess import Preprocess
from ..core.runtimes import load_runtime


class UnverifiedModel(ValueError):
    """An artifact without a passing verification gate, or whose bytes are not those its card describes."""


def check_artifact(path: Path, card: dict | None) -> str | None:
    """None when ``path`` passed the export gate and is the file its card describes; else why not."""
    return unverified_reason(path, card) or file_mismatch(path, card)


LARGE_PICTURE = 4_000_000  # pixels; after decoding one this large, freed heap goes back to the system


def _give_back_memory() -> None:
    """Return freed heap to the system after a large decode: glibc keeps it in its arenas otherwise,
    and a server that decoded one 40-megapixel picture per thread would hold gigabytes idle."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): nothing to do


class Classifier:
    def __init__(self, model_path: str | os.PathLike, workers: int | None = None, threads_per_worker: int = 1,
                 max_pixels: int = 40_000_000, allow_unverified: bool = False, uncertain_band: float = 0.0):
        self.path = Path(model_path)
        self.uncertain_band = uncertain_band
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model file; pass --model with an exported .tflite or .onnx")
        self._loaded = file_state(self.path)  # what /model describes, however the file changes later
        self.card: dict[str, Any] = card_of(self.path) or {}
        self.problem = check_artifact(self.path, self.card)
        if self.problem and not allow_unverified:
            raise UnverifiedModel(f"{self.problem}; the app serves verified artifacts only (--allow-unverified "
                                  "to serve it anyway, with a warning on the page)")
        workers = workers or max(1, os.cpu_count() or 1)
        self.workers = workers
        # Decodes in flight = interpreters in the pool: more would only wait for an interpreter while
        # each held a decoded picture. A thread semaphore, not an asyncio one: it must hold across
        # whatever event loops the server runs (a test client starts one per request).
        self._slots = threading.BoundedSemaphore(workers)
        self._pool: queue.Queue = queue.Queue()
        for _ in range(workers):
            self._pool.put(load_runtime(self.path, threads=threads_per_worker))
        first = self._pool.queue[0]
        self.image_size = first.image_size
        n_out = None
        self.labels: list[str] = self.card.get("labels") or []
        if not self.labels:
            n_out = first.predict(np.zeros((1, self.image_size, self.image_size, 3), np.uint8)).shape[1]
            self.labels = [f"class_{i}" for i in range(n_out)]
        self.preprocess = Preprocess.from_card(self.card, self.image_size)
        self.max_pixels = max_pixels
        self.runtime = f"{first.name} {first.version}"

    @contextmanager
    def _runtime(self):
        rt = self._pool.get()
        try:
            yield rt
        finally:
            self._pool.put(rt)

    def describe(self) -> dict[str, Any]:
        """The card as anyone who can reach the app may see it: file names, never server paths."""
        card = dict(self.card)
        card.setdefault("name", self.path.name)
        card["file"] = self.path.name
        if isinstance(card.get("source"), dict):
            card["source"] = {k: (Path(v).name if isinstance(v, str) and ("/" in v or "\\" in v) else v)
                              for k, v in card["source"].items()}
        card["size_bytes"] = self._loaded.size
        card["served_by"] = self.runtime
        if file_state(self.path) != self._loaded:
            card["stale"] = (f"{self.path.name} changed on disk since the app loaded it (re-exported?): the app "
                             "still serves the model it loaded and describes; restart mstl-app to serve the new one")
        card["verified"] = self.problem is None
        if self.problem:
            card["unverified_reason"] = self.problem
        return card

    def operating_point(self) -> dict[str, Any] | None:
        """The card's decision when it chose one (an older card, or one without, decides at 0.5)."""
        d = self.card.get("decision") or {}
        return d if d.get("chosen_on") and len(self.labels) == 2 else None

    def decision(self, probs: np.ndarray) -> dict[str, Any]:
        """The label at the card's operating point, the calibrated probability, which side of the
        threshold it falls, and "uncertain - refer" inside the band around it."""
        from ..core.decision import decide
        op = self.operating_point()
        (d,) = decide(probs[None, :], op, self.uncertain_band if op else 0.0)
        out: dict[str, Any] = {"label": self.labels[d["label_index"]]}
        if not op:
            out["operating_point"] = {"threshold": 0.5, "chosen": False,
                                      "text": "no operating point in the model card: the most probable class (0.5)"}
            return out
        sens = op.get("validation_sensitivity")
        what = f"{op.get('target')}" + (f", sensitivity {100 * sens:.0f}% on validation" if sens is not None else "")
        pos = op.get("positive_class", self.labels[int(op.get("positive_index", 1))])
        out.update({"calibrated_probability": {pos: d["positive_probability"]}, "uncertain": d["uncertain"],
                    "operating_point": {"threshold": d["threshold"], "temperature": op.get("temperature"),
                                        "chosen": True, "side": d["side"], "band": self.uncertain_band,
                                        "text": f"{d['side']} the operating point ({what})"}})
        if d["uncertain"]:
            out["label"] = "uncertain - refer"
            out["operating_point"]["text"] += f"; within {self.uncertain_band} of the threshold"
        return out

    def classify(self, data: bytes, name: str = "<upload>") -> dict[str, Any]:
        with self._slots:
            return self._classify(data, name)

    def _classify(self, data: bytes, name: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        # Opened once: the size check, the decode and the memory decision all read this one picture
        # (a second Image.open of the bytes parsed, and for some formats decoded, the upload again)
        img = open_image(data, name, self.max_pixels)
        large = img.width * img.height >= LARGE_PICTURE  # before the decode: a JPEG draft shrinks img
        try:
            pixels = self.preprocess.load(img, name=name, max_pixels=self.max_pixels)
        finally:
            img.close()
            if large:
                _give_back_memory()
        t1 = time.perf_counter()
        with self._runtime() as rt:
            probs = rt.output_probs(rt.run(rt.prepare(pixels)))[0]
        t2 = time.perf_counter()
        probs = np.clip(probs.astype(np.float64), 0, None)
        total = probs.sum()
        probs = probs / total if total > 0 else np.full_like(probs, 1 / len(probs))
        return {
            **self.decision(probs),
            "probabilities": {lab: float(p) for lab, p in zip(self.labels, probs)},
            "latency_ms": round((t2 - t0) * 1000, 3),
            "timing_ms": {"decode_resize": round((t1 - t0) * 1000, 3), "inference": round((t2 - t1) * 1000, 3)},
        }
