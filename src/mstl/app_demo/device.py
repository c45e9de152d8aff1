"""The in-browser bench behind the app's /device page: which artifacts a browser may run, the held-out
sample images with the server's own answers on them, and the rows browsers post back.

A posted row is checked here, not trusted: the browser sends its probabilities for every sample, and
the agreement with the server's native run (same artifact, same files, Pillow's decoding) is computed
by the server. Rows are stored in mstl-bench's JSON row schema under RUN_DIR/bench/device/, where
``mstl-bench RUN_DIR/exports --include-device-results`` finds them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.browser_rows import device_dir
from ..cards import card_of
from ..formats import precision_of
from ..train.store import atomic_write_text, read_split  # the run-dir schema (no TensorFlow)
from .inference import check_artifact

BROWSER_FORMATS = (".onnx", ".tflite")  # onnxruntime-web, LiteRT.js
LOW_AGREEMENT = 0.98  # a browser row below this says so (the export gate's int8 threshold is 0.99)
MAX_SAMPLES = 200
MAX_STORED_ROWS = 1000  # anyone who reaches the app can post: rows must not fill the server's disk


class DeviceError(ValueError):
    pass


class DeviceFull(DeviceError):
    pass


class DeviceBench:
    def __init__(self, exports: Path, n_samples: int = 100, max_rows: int = MAX_STORED_ROWS):
        self.exports = Path(exports)
        self.max_rows = max_rows
        self.artifacts: dict[str, dict] = {}
        for path in sorted(self.exports.iterdir()) if self.exports.is_dir() else []:
            if path.suffix not in BROWSER_FORMATS:
                continue
            card = card_of(path)
            if check_artifact(path, card) is None:  # only what passed the export gate, unaltered
                self.artifacts[path.name] = {"path": path, "card": card, "format": card.get("format", path.suffix[1:]),
                                             "precision": card.get("precision") or precision_of(path.name)}
        self.samples, self.labels = self._samples(min(max(n_samples, 0), MAX_SAMPLES))
        self._reference: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _samples(self, n: int) -> tuple[list[str], list[int]]:
        """The run's held-out test images (the ones mstl-bench measures accuracy on), first ``n``."""
        found = read_split(self.exports.parent, "test") if n else None
        if not found:
            return [], []
        files, labels = found
        keep = [i for i, f in enumerate(files) if Path(f).is_file()][:n]
        return [files[i] for i in keep], [int(labels[i]) for i in keep]

    def reference(self, name: str) -> np.ndarray:
        """The server's own probabilities for the samples with this artifact (native runtime, Pillow)."""
        with self._lock:
            if name not in self._reference:
                from ..preprocess import Preprocess
                from ..runtimes import load_runtime
                a = self.artifacts[name]
                prep = Preprocess.from_card(a["card"])
                rt = load_runtime(a["path"], threads=1)
                pixels = prep.load_many(self.samples) if self.samples else np.zeros((0, prep.size, prep.size, 3), np.uint8)
                self._reference[name] = rt.predict(pixels) if len(pixels) else np.zeros((0, 2), np.float32)
            return self._reference[name]

    def manifest(self) -> dict[str, Any]:
        models = []
        for name, a in self.artifacts.items():
            card = a["card"]
            models.append({
                "name": name, "url": f"/device/models/{name}", "format": a["format"],
                "precision": a["precision"], "bytes": a["path"].stat().st_size,
                "sha256": card.get("sha256"), "input": card.get("input"), "output": card.get("output"),
                "labels": card.get("labels"), "decision": card.get("decision"),
                "reference": np.round(self.reference(name), 6).tolist(),
            })
        return {"models": models,
                "samples": [{"id": i, "url": f"/device/samples/{i}", "name": Path(f).name, "label": y}
                            for i, (f, y) in enumerate(zip(self.samples, self.labels))],
                "low_agreement": LOW_AGREEMENT, "runtimes": packaged_runtimes(),
                "note": None if self.samples else "no held-out samples (none asked for, or the exports folder is not "
                                                  "inside a run dir): agreement with the server cannot be measured"}

    def model_file(self, name: str) -> Path:
        if name not in self.artifacts:
            raise DeviceError(f"{name}: not a verified artifact of this app's exports folder")
        return self.artifacts[name]["path"]

    def model_bytes(self, name: str) -> bytes:
        """What the browser loads: the file itself, or for .tflite its batch-1 copy (fixed_batch_tflite)."""
        path = self.model_file(name)
        with self._lock:
            a = self.artifacts[name]
            if "browser_bytes" not in a:
                data = path.read_bytes()
                a["browser_bytes"] = fixed_batch_tflite(data) if path.suffix == ".tflite" else data
            return a["browser_bytes"]

    def sample_file(self, i: int) -> Path:
        if not 0 <= i < len(self.samples):
            raise DeviceError(f"sample {i}: there are {len(self.samples)} samples")
        return Path(self.samples[i])

    def record(self, posted: dict[str, Any]) -> dict[str, Any]:
        """Check a browser's result and store it as an mstl-bench row; returns the row."""
        row = to_row(posted, self)
        folder = device_dir(self.exports)
        folder.mkdir(parents=True, exist_ok=True)
        if sum(1 for _ in folder.glob("*.json")) >= self.max_rows:
            raise DeviceFull(f"{folder} already holds {self.max_rows} device rows: read them with "
                             "`mstl-bench --include-device-results`, then move or delete them to record more")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{time.strftime('%Y%m%d-%H%M%S')}-{row['artifact']}-{row['backend']}")
        path = folder / f"{stem}.json"
        k = 1
        while path.exists():
            path = folder / f"{stem}-{k}.json"
            k += 1
        atomic_write_text(path, json.dumps(row, indent=2))
        row["saved_as"] = path.name
        return row


def packaged_runtimes() -> dict | None:
    """The in-browser runtimes shipped in the package (vendor/vendor.json), or None when it was built
    without them (no npm at build time)."""
    from importlib import resources
    meta = resources.files("mstl.app_demo").joinpath("static/vendor/vendor.json")
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return {"packages": sorted(info.get("packages", {})), "bytes": info.get("total_bytes")}


def _number(d: dict, key: str, lo: float = 0.0, hi: float = 1e7, within: str = "") -> float:
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo <= float(v) <= hi):
        raise DeviceError(f"field '{within}{key}': expected a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _text(d: dict, key: str, limit: int = 300) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise DeviceError(f"field {key!r}: expected text")
    return v[:limit]


def _stats(d: Any, what: str) -> dict[str, float]:
    if not isinstance(d, dict):
        raise DeviceError(f"field {what!r}: expected an object with p50, p90, p99, mean")
    return {k: _number(d, k, within=f"{what}.") for k in ("p50", "p90", "p99", "mean")}


def to_row(posted: dict[str, Any], bench: DeviceBench) -> dict[str, Any]:
    """A browser's post -> an mstl-bench row, every figure checked; agreement computed here."""
    if not isinstance(posted, dict):
        raise DeviceError("expected a JSON object")
    name = _text(posted, "artifact")
    path = bench.model_file(name)
    a = bench.artifacts[name]
    threads = int(_number(posted, "threads", 1, 1024))
    lat = _stats(posted.get("latency_ms"), "latency_ms")
    e2e = _stats(posted.get("e2e_ms"), "e2e_ms") if posted.get("e2e_ms") is not None else None
    runs = int(_number(posted, "runs", 1, 100000))
    load_ms, first_ms = _number(posted, "load_ms"), _number(posted, "first_ms")
    probs = posted.get("probs")
    ref = bench.reference(name)
    agreement = None
    notes = ["measured in a browser"]
    if len(ref):
        try:
            got = np.asarray(probs, dtype=np.float64)
        except (TypeError, ValueError):
            raise DeviceError("field 'probs': expected one list of probabilities per sample") from None
        if got.shape != ref.shape or not np.all(np.isfinite(got)):
            raise DeviceError(f"field 'probs': expected {ref.shape[0]} x {ref.shape[1]} finite probabilities "
                              f"(one row per sample), got shape {got.shape}")
        same = got.argmax(1) == ref.argmax(1)
        labels = np.asarray(bench.labels)
        agreement = {"n": int(len(ref)), "agree": int(same.sum()), "rate": float(same.mean()),
                     "max_abs_diff": float(np.abs(got - ref).max()),
                     "browser_accuracy": float(np.mean(got.argmax(1) == labels)),
                     "server_accuracy": float(np.mean(ref.argmax(1) == labels)),
                     "low": bool(same.mean() < LOW_AGREEMENT)}
        notes.append(f"agreement with the server {100 * agreement['rate']:.1f}% on {len(ref)} images"
                     + (" - LOW: the browser's preprocessing or runtime differs" if agreement["low"] else ""))
        decision = (bench.artifacts[name]["card"].get("decision") or {}) if ref.shape[1] == 2 else {}
        if decision.get("chosen_on"):
            agreement["at_operating_point"] = _at_operating_point(got, ref, labels, decision)
            at = agreement["at_operating_point"]
            notes.append(f"decisions at the card's operating point (threshold {at['threshold']:.3f}): "
                         f"{100 * at['decision_agreement']:.1f}% the server's; sensitivity "
                         f"{_pct(at['sensitivity'])}, specificity {_pct(at['specificity'])} in the browser")
    else:
        notes.append("agreement not measured (no held-out samples)")
    runtime = _text(posted, "runtime", 80)
    backend = _text(posted, "backend", 80)
    device = posted.get("device") if isinstance(posted.get("device"), dict) else {}
    device = {k: (v[:300] if isinstance(v, str) else v) for k, v in device.items()
              if k in ("user_agent", "hardware_concurrency", "platform", "device_memory_gb", "cross_origin_isolated",
                       "viewport", "webgpu") and isinstance(v, (str, int, float, bool))}
    row = {
        "artifact": name, "format": a["format"], "precision": a["precision"],
        "status": "ok", "measured_in": "browser", "runtime": runtime, "backend": backend, "device": device,
        "source": f"browser: {runtime} {backend}, {threads} thread(s); {device.get('user_agent', 'unknown browser')[:120]}",
        "size_mb": path.stat().st_size / 1e6, "sha256": a["card"].get("sha256"),
        "init_ms": load_ms, "first_ms": first_ms,
        "latency": {str(threads): {**lat, "first": first_ms, "images_per_s": 1000.0 / max(lat["mean"], 1e-9),
                                   "runs": runs, "init_ms": load_ms}},
        "latency_ms": {str(threads): lat}, "e2e_ms": e2e, "threads": threads,
        "accuracy": agreement["browser_accuracy"] if agreement else None, "agreement": agreement,
        "peak_rss_mb": None, "verified": True, "notes": notes, "posted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return row


def fixed_batch_tflite(data: bytes) -> bytes:
    """A copy of a .tflite whose batch dimension is fixed at 1 (same ops, same weights).

    Our exports keep a dynamic batch (shape signature [-1, H, W, 3]) for the native runtimes; LiteRT.js
    2.5 cannot resize inputs and refuses a batch-1 tensor for a -1 dimension. The page runs this copy,
    and its agreement with the server's native run of the original file is what the row reports."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for sub in model.subgraphs or []:
        for t in sub.tensors or []:
            sig = t.shapeSignature
            if sig is not None and len(sig) and sig[0] == -1:
                t.shapeSignature = [1, *list(sig)[1:]]
                if t.shape is not None and len(t.shape):
                    t.shape = [1, *list(t.shape)[1:]]
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _at_operating_point(got: np.ndarray, ref: np.ndarray, labels: np.ndarray, decision: dict) -> dict[str, Any]:
    """The browser's decisions at the card's threshold (calibrated probability) against the server's,
    and its sensitivity and specificity there."""
    from ..decision import decide, rates_at
    mine = np.array([d["label_index"] for d in decide(got, decision)])
    theirs = np.array([d["label_index"] for d in decide(ref, decision)])
    r = rates_at(got, labels, decision)
    return {"threshold": float(decision["threshold"]), "temperature": float(decision.get("temperature", 1.0)),
            "decision_agreement": float(np.mean(mine == theirs)), "sensitivity": r["sensitivity"],
            "specificity": r["specificity"]}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
