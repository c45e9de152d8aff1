"""The in-browser bench behind the app's /device page: which artifacts a browser may run, the held-out
sample images, and the rows browsers post back.

A posted row is checked here, not trusted: the browser sends its probabilities for every sample, and
the agreement with the server's native run (same artifact, same files, Pillow's decoding) is computed
by the server, which never publishes its own answers (nor the samples' labels or file names) - a page
that wants 100% agreement has to run the model. What a row cannot prove: that a browser, this page or
the device it names computed it. Timings, runtime and device are the poster's word; probabilities can
come from any program that ran the same model on the same images. Each stored row says so
(``provenance``). Rows are stored in mstl-bench's JSON row schema under RUN_DIR/bench/device/, where
``mstl-bench RUN_DIR/exports --include-device-results`` finds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..core.browser_rows import PROVENANCE, device_dir
from ..core.cards import CardError, card_of, file_state, sha256_file, unverified_reason
from ..core.formats import precision_of
from ..core.metrics import percent
from ..core.outputs import write_then_rename
from ..core.progress import warn
from ..core.rundir import read_split

BROWSER_FORMATS = (".onnx", ".tflite")  # onnxruntime-web, LiteRT.js
LOW_AGREEMENT = 0.98  # a browser row below this says so (the export gate's int8 threshold is 0.99)
MAX_SAMPLES = 200
MAX_STORED_ROWS = 1000  # anyone who reaches the app can post: rows must not fill the server's disk
MAX_SESSIONS = 10000  # page loads remembered (the oldest forgotten first)
SESSION_SECONDS = 6 * 3600  # a page load may post for this long
MIN_MS = 0.001  # no model runs in under a microsecond: a smaller figure is not a timing
MAX_MS = 1e7
# Probabilities of an int8 output are multiples of its scale (1/256 for a softmax): each may be off by
# half a step, so a row of them sums to 1 only within a step per class.
SUM_SLACK = 0.01
DEVICE_FIELDS = {"user_agent": str, "platform": str, "viewport": str, "hardware_concurrency": int,
                 "device_memory_gb": float, "cross_origin_isolated": bool, "webgpu": bool}
TEXT_LIMITS = {"artifact": 200, "runtime": 80, "backend": 80, "session": 64, "user_agent": 500, "platform": 100,
               "viewport": 40}
# The longest JSON spelling of a probability (0.0000012345678901234567) and its separator: the body
# limit is what a maximal row needs at that length, twice over.
LONGEST_NUMBER = 26
BODY_BASE_BYTES = 4096  # every field but the probabilities, at its limit: 1.5 KB


class DeviceError(ValueError):
    pass


class DeviceFull(DeviceError):
    pass


class DeviceBodyError(DeviceError):
    """A body that is not JSON."""


class DeviceStale(DeviceError):
    """The artifact's file changed on disk after the app loaded it."""


class DeviceSession(DeviceError):
    """A post that no page load of this server process asked for."""


class DeviceBench:
    def __init__(self, exports: Path, n_samples: int = 100, max_rows: int = MAX_STORED_ROWS,
                 uncertain_band: float = 0.0):
        self.exports = Path(exports)
        self.max_rows = max_rows
        self.uncertain_band = uncertain_band  # the app's: the page answers "uncertain - refer" as /predict does
        self.artifacts: dict[str, dict] = {}
        self.unreadable: dict[str, str] = {}  # a broken card beside another artifact leaves that one out, not the app
        for path in sorted(self.exports.iterdir()) if self.exports.is_dir() else []:
            if path.suffix in BROWSER_FORMATS:
                try:
                    pinned = _pin(path)
                except CardError as e:
                    self.unreadable[path.name] = str(e)
                    warn(f"/device leaves {path.name} out: {e}")
                    continue
                if pinned:
                    self.artifacts[path.name] = pinned
        self.samples, self.labels = self._samples(min(max(n_samples, 0), MAX_SAMPLES))
        self._reference: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # the reference pass and the batch-1 copies
        self._store_lock = threading.Lock()  # count + write of rows, sessions
        self._state_lock = threading.Lock()
        self._sessions: OrderedDict[str, dict] = OrderedDict()

    def _samples(self, n: int) -> tuple[list[str], list[int]]:
        """The run's held-out test images (the ones mstl-bench measures accuracy on), first ``n``."""
        found = read_split(self.exports.parent, "test") if n else None
        if not found:
            return [], []
        files, labels = found
        keep = [i for i, f in enumerate(files) if Path(f).is_file()][:n]
        return [files[i] for i in keep], [int(labels[i]) for i in keep]

    def reference(self, name: str) -> np.ndarray:
        """The server's own probabilities for the samples with this artifact (native runtime, Pillow),
        from the bytes the app pinned at start (not whatever the file holds now)."""
        with self._lock:
            if name not in self._reference:
                from ..core.preprocess import Preprocess
                from ..core.runtimes import load_runtime
                a = self.artifacts[name]
                with tempfile.TemporaryDirectory(prefix="mstl-device-") as tmp:
                    copy = Path(tmp) / name
                    copy.write_bytes(a["bytes"])
                    rt = load_runtime(copy, threads=1)
                    # the artifact's own input size, as the app's: an older card may give no shape
                    prep = Preprocess.from_card(a["card"], rt.image_size)
                    pixels = (prep.load_many(self.samples) if self.samples
                              else np.zeros((0, prep.size, prep.size, 3), np.uint8))
                    self._reference[name] = rt.predict(pixels) if len(pixels) else np.zeros((0, 2), np.float32)
                    del rt
            return self._reference[name]

    def n_classes(self) -> int:
        return max([len(a["card"].get("labels") or []) for a in self.artifacts.values()] + [2])

    def max_body_bytes(self) -> int:
        return body_limit(len(self.samples), self.n_classes())

    def stale(self) -> dict[str, str]:
        """Artifacts whose file on disk is no longer the one the app pinned at start, and why; files
        that appeared since (a re-export) under their own names. Re-hashed only when a file's size,
        inode or mtime moved, once per change."""
        out = {}
        with self._state_lock:
            for name, a in self.artifacts.items():
                try:
                    state = file_state(a["path"])
                except OSError:
                    out[name] = "its file was removed"
                    continue
                if state != a["state"]:
                    if a.get("checked") is None or a["checked"][0] != state:
                        a["checked"] = (state, _sha256_path(a["path"]) == a["sha256"])
                    if not a["checked"][1]:
                        out[name] = "its file was replaced (re-exported?)"
            for path in sorted(self.exports.glob("*")) if self.exports.is_dir() else []:
                if path.suffix in BROWSER_FORMATS and path.name not in self.artifacts and path.with_name(path.name + ".json").is_file():
                    out[path.name] = "new since the app started: not served"
        return out

    def stale_note(self, stale: dict[str, str] | None = None) -> str | None:
        stale = self.stale() if stale is None else stale
        if not stale:
            return None
        return ("the exports folder changed since this app loaded it (" + "; ".join(f"{k}: {v}" for k, v in stale.items())
                + "): restart mstl-app to serve and measure the new files; rows for the files that changed are refused")

    def new_session(self) -> dict[str, Any]:
        """A page load's session: a random id the page echoes in each post (one post per artifact)."""
        token = secrets.token_urlsafe(24)
        now = time.time()
        with self._store_lock:
            self._sessions[token] = {"issued": now, "posted": set()}
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return {"id": token, "issued_at": _iso(now), "expires_in_s": SESSION_SECONDS}

    def manifest(self) -> dict[str, Any]:
        stale = self.stale()
        models = []
        for name, a in self.artifacts.items():
            if name in stale:
                continue  # the page must not measure what the app no longer vouches for
            card = a["card"]
            self.reference(name)  # run the server's pass now, so that posts are quick
            models.append({
                "name": name, "url": f"/device/models/{name}", "format": a["format"],
                "precision": a["precision"], "bytes": len(a["bytes"]),
                "sha256": a["sha256"], "input": card.get("input"), "output": card.get("output"),
                "labels": card.get("labels"), "decision": card.get("decision"),
            })
        return {"models": models, "session": self.new_session(),
                # ids only: a label or a file name (often the class's) would let a page guess the answers
                "samples": [{"id": i, "url": f"/device/samples/{i}"} for i in range(len(self.samples))],
                "low_agreement": LOW_AGREEMENT, "runtimes": packaged_runtimes(), "uncertain_band": self.uncertain_band,
                "stale": self.stale_note(stale), "max_body_bytes": self.max_body_bytes(),
                "left_out": self.unreadable or None,
                "note": None if self.samples else "no held-out samples (none asked for, or the exports folder is not "
                                                  "inside a run dir): agreement with the server cannot be measured"}

    def model_file(self, name: str) -> Path:
        if name not in self.artifacts:
            raise DeviceError(f"{name}: not a verified artifact of this app's exports folder")
        return self.artifacts[name]["path"]

    def model_bytes(self, name: str) -> bytes:
        """What the browser loads: the bytes the app hashed at start, or for .tflite their batch-1 copy
        (fixed_batch_tflite) - never a file that changed since."""
        path = self.model_file(name)
        with self._lock:
            a = self.artifacts[name]
            if "browser_bytes" not in a:
                a["browser_bytes"] = fixed_batch_tflite(a["bytes"]) if path.suffix == ".tflite" else a["bytes"]
            return a["browser_bytes"]

    def sample_file(self, i: int) -> Path:
        if not 0 <= i < len(self.samples):
            raise DeviceError(f"sample {i}: there are {len(self.samples)} samples")
        return Path(self.samples[i])

    def record_body(self, body: bytes) -> dict[str, Any]:
        """A posted JSON body -> the stored row (parsed here, off the server's event loop)."""
        return self.record(parse_body(body))

    def record(self, posted: dict[str, Any]) -> dict[str, Any]:
        """Check a browser's result and store it as an mstl-bench row; returns the row. Everything is
        checked before anything is written; the count and the write are one step under a lock (held
        across processes where the OS has flock), so the cap holds however many post at once."""
        row = to_row(posted, self)
        text = json.dumps(row, indent=2, allow_nan=False)
        folder = device_dir(self.exports)
        try:
            with self._store_lock, _folder_lock(folder):
                return self._store(row, text, folder, posted.get("session"))
        except OSError as e:  # a full disk, a read-only run dir: the poster's row is lost, say so and where
            raise DeviceFull(f"{folder}: the row could not be stored ({e.strerror or e}); free space or make "
                             "the run dir writable, then run the page again") from None

    def _store(self, row: dict[str, Any], text: str, folder: Path, token: Any) -> dict[str, Any]:
        """Under the store lock: refuse a changed artifact, a foreign or spent session, a full folder; then
        write under a name of its own."""
        problem = self.stale().get(row["artifact"])
        if problem:
            raise DeviceStale(f"{row['artifact']}: {problem} after this app loaded it; the row would describe a "
                              "file that is no longer there, so it is not stored - restart mstl-app and run the page again")
        session = self._session(token, row["artifact"])
        if sum(1 for _ in folder.glob("*.json")) >= self.max_rows:
            raise DeviceFull(f"{folder} already holds {self.max_rows} device rows: read them with "
                             "`mstl-bench --include-device-results`, then move or delete them to record more")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{time.strftime('%Y%m%d-%H%M%S')}-{row['artifact']}-{row['backend']}")
        path = folder / f"{stem}-{uuid.uuid4().hex[:12]}.json"
        _write_new(path, text)
        session["posted"].add(row["artifact"])  # spent only by a row that was stored
        row["saved_as"] = path.name
        return row

    def _session(self, token: Any, artifact: str) -> dict:
        """The post's session: one this process issued, unexpired, without a row for this artifact yet."""
        s = self._sessions.get(token) if isinstance(token, str) else None
        if s is None or time.time() - s["issued"] > SESSION_SECONDS:
            raise DeviceSession("field 'session': not a session this server issued (or it expired): load /device "
                                "and run the bench from the page - each page load gets one from /device/manifest")
        if artifact in s["posted"]:
            raise DeviceSession(f"{artifact}: this page load already posted its row (one per artifact and page load)")
        return s


def body_limit(n_samples: int, n_classes: int) -> int:
    """The largest JSON body a real row can need, twice over: every probability at its longest
    spelling, every text field at its limit (a cap against memory and parse time, not a budget)."""
    return 2 * (BODY_BASE_BYTES + n_samples * n_classes * LONGEST_NUMBER)


def _pin(path: Path) -> dict | None:
    """An artifact that passed the export gate, its bytes read once and hashed: what the app serves
    and measures for as long as it runs. None when it is unverified or not the file its card names."""
    card = card_of(path)
    if unverified_reason(path, card) is not None:
        return None
    state = file_state(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if card.get("sha256") and digest != card["sha256"]:
        return None  # not the file its card describes (hashed once, from the bytes that will be served)
    return {"path": path, "card": card, "format": card.get("format", path.suffix[1:]),
            "precision": card.get("precision") or precision_of(path.name), "bytes": data, "sha256": digest,
            "state": state}


def _sha256_path(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on the rows folder between processes (two apps over one run dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: the thread lock alone
        yield
        return
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_new(path: Path, text: str) -> None:
    """``text`` at ``path`` whole or not at all: written under a temporary name of its own (not *.json,
    so never counted as a row), then renamed."""
    write_then_rename(path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"), lambda tmp: tmp.write_text(text))


def parse_body(body: bytes) -> Any:
    """JSON as a row needs it: no NaN or Infinity (JSON has neither; Python's parser takes them)."""
    def no_constants(name):
        raise ValueError(f"{name} is not a JSON number")
    try:
        return json.loads(body, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser goes
        why = "nested thousands deep" if isinstance(e, RecursionError) else str(e)[:120]
        raise DeviceBodyError(f"expected a JSON body (an object; {why})") from None


def packaged_runtimes() -> dict | None:
    """The in-browser runtimes shipped in the package (vendor/vendor.json), or None when it was built
    without them (no npm at build time)."""
    from importlib import resources
    meta = resources.files("mstl.edge.app").joinpath("static/vendor/vendor.json")
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return {"packages": sorted(info.get("packages", {})), "bytes": info.get("total_bytes")}


def _number(d: dict, key: str, lo: float = 0.0, hi: float = MAX_MS, within: str = "", integer: bool = False) -> float:
    v = d.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    if ok and integer and v != int(v):
        ok = False
    if not ok:
        kind = "a whole number" if integer else "a finite number"
        raise DeviceError(f"field '{within}{key}': expected {kind} in [{lo:g}, {hi:g}], got {_show(v)}")
    return int(v) if integer else float(v)


def _text(d: dict, key: str, within: str = "", required: bool = False) -> str:
    v = d.get(key, None if required else "")
    limit = TEXT_LIMITS[key]
    if not isinstance(v, str) or len(v) > limit or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise DeviceError(f"field '{within}{key}': expected text of at most {limit} characters without control "
                          f"characters, got {_show(v)}")
    return v


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _stats(d: Any, what: str) -> dict[str, float]:
    """p50 <= p90 <= p99 (whichever the row has, p50 and mean required), a positive mean. A percentile
    may be 0: a page that is not cross-origin isolated has a 0.1 ms clock, and a small model runs
    faster than that."""
    if not isinstance(d, dict):
        raise DeviceError(f"field {what!r}: expected an object with p50, p90, p99, mean")
    out = {k: _number(d, k, MIN_MS if k == "mean" else 0.0, within=f"{what}.")
           for k in ("p50", "p90", "p99", "mean") if k in d or k in ("p50", "mean")}
    ordered = [k for k in ("p50", "p90", "p99") if k in out]
    for lo, hi in zip(ordered, ordered[1:]):
        if out[lo] > out[hi]:
            raise DeviceError(f"field '{what}': percentiles out of order ({lo} {out[lo]:g} > {hi} {out[hi]:g} ms)")
    return out


def _probabilities(probs: Any, ref: np.ndarray) -> np.ndarray:
    """One probability distribution per sample, in the reference's shape."""
    try:
        got = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DeviceError("field 'probs': expected one list of probabilities per sample") from None
    if got.shape != ref.shape:
        raise DeviceError(f"field 'probs': expected {ref.shape[0]} x {ref.shape[1]} probabilities "
                          f"(one row per sample), got shape {got.shape}")
    if not np.all(np.isfinite(got)) or got.min(initial=0) < -1e-6 or got.max(initial=0) > 1 + 1e-6:
        raise DeviceError("field 'probs': every probability must be a finite number in [0, 1]")
    off = np.abs(got.sum(1) - 1) if len(got) else np.zeros(0)
    slack = SUM_SLACK + ref.shape[1] / 256
    if len(off) and off.max() > slack:
        i = int(off.argmax())
        raise DeviceError(f"field 'probs': sample {i}'s probabilities sum to {got[i].sum():.4f}, not 1 (within {slack:.3f})")
    return got


def _device(d: Any) -> dict[str, Any]:
    """The page's description of its device: known fields only, each of its type and bounded."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise DeviceError("field 'device': expected an object")
    out: dict[str, Any] = {}
    for key, kind in DEVICE_FIELDS.items():
        if key not in d:
            continue
        if kind is str:
            out[key] = _text(d, key, within="device.")
        elif kind is bool:
            if not isinstance(d[key], bool):
                raise DeviceError(f"field 'device.{key}': expected true or false, got {_show(d[key])}")
            out[key] = d[key]
        elif kind is int:
            out[key] = _number(d, key, 1, 4096, within="device.", integer=True)
        else:
            out[key] = _number(d, key, 0, 1e5, within="device.")
    return out


def to_row(posted: dict[str, Any], bench: DeviceBench) -> dict[str, Any]:
    """A browser's post -> an mstl-bench row, every figure checked; agreement computed here."""
    if not isinstance(posted, dict):
        raise DeviceError("expected a JSON object")
    name = _text(posted, "artifact", required=True)
    bench.model_file(name)
    a = bench.artifacts[name]
    threads = _number(posted, "threads", 1, 1024, integer=True)
    lat = _stats(posted.get("latency_ms"), "latency_ms")
    e2e = _stats(posted.get("e2e_ms"), "e2e_ms") if posted.get("e2e_ms") is not None else None
    runs = _number(posted, "runs", 1, 100000, integer=True)
    load_ms, first_ms = _number(posted, "load_ms", MIN_MS), _number(posted, "first_ms", MIN_MS)
    runtime = _text(posted, "runtime")
    backend = _text(posted, "backend")
    device = _device(posted.get("device"))
    ref = bench.reference(name)
    agreement = None
    notes = ["measured in a browser", "self-reported: the server checked the answers against its own run, "
             "not who computed them; timings and device are the page's word"]
    if len(ref):
        got = _probabilities(posted.get("probs"), ref)
        same = got.argmax(1) == ref.argmax(1)
        labels = np.asarray(bench.labels)
        agreement = {"n": int(len(ref)), "agree": int(same.sum()), "rate": float(same.mean()),
                     "max_abs_diff": float(np.abs(got - ref).max()),
                     "browser_accuracy": float(np.mean(got.argmax(1) == labels)),
                     "server_accuracy": float(np.mean(ref.argmax(1) == labels)),
                     "low": bool(same.mean() < LOW_AGREEMENT)}
        notes.append(f"agreement with the server {100 * agreement['rate']:.1f}% on {len(ref)} images"
                     + (" - LOW: the browser's preprocessing or runtime differs" if agreement["low"] else ""))
        decision = (a["card"].get("decision") or {}) if ref.shape[1] == 2 else {}
        if decision.get("chosen_on"):
            agreement["at_operating_point"] = _at_operating_point(got, ref, labels, decision)
            at = agreement["at_operating_point"]
            notes.append(f"decisions at the card's operating point (threshold {at['threshold']:.3f}): "
                         f"{100 * at['decision_agreement']:.1f}% the server's; sensitivity "
                         f"{percent(at['sensitivity'])}, specificity {percent(at['specificity'])} in the browser")
    else:
        notes.append("agreement not measured (no held-out samples)")
    session = bench._sessions.get(posted.get("session")) if isinstance(posted.get("session"), str) else None
    row = {
        "artifact": name, "format": a["format"], "precision": a["precision"],
        "status": "ok", "measured_in": "browser", "runtime": runtime, "backend": backend, "device": device,
        "source": f"browser: {runtime} {backend}, {threads} thread(s); {device.get('user_agent', 'unknown browser')[:120]}",
        "size_mb": len(a["bytes"]) / 1e6, "sha256": a["sha256"],
        "init_ms": load_ms, "first_ms": first_ms,
        "latency": {str(threads): {**lat, "first": first_ms, "images_per_s": 1000.0 / lat["mean"],
                                   "runs": runs, "init_ms": load_ms}},
        "latency_ms": {str(threads): lat}, "e2e_ms": e2e, "threads": threads,
        "accuracy": agreement["browser_accuracy"] if agreement else None, "agreement": agreement,
        "peak_rss_mb": None, "verified": True, "notes": notes, "posted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "provenance": {**PROVENANCE, "session_issued_at": _iso(session["issued"]) if session else None},
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
    from ..core.decision import decide, rates_at
    mine = np.array([d["label_index"] for d in decide(got, decision)])
    theirs = np.array([d["label_index"] for d in decide(ref, decision)])
    r = rates_at(got, labels, decision)
    return {"threshold": float(decision["threshold"]), "temperature": float(decision.get("temperature", 1.0)),
            "decision_agreement": float(np.mean(mine == theirs)), "sensitivity": r["sensitivity"],
            "specificity": r["specificity"]}
