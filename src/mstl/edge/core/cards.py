"""Model cards beside exported artifacts (``<file>.json``): reading one, and checking that a file is
the one its card describes. No TensorFlow: the bench and the app on a device use these."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple


class CardError(ValueError):
    """A model card or an exports manifest that cannot be read: one line naming the file and the fix."""


# Card fields mstl reads as objects (a card edited by hand into another shape would fail deep inside).
_CARD_OBJECTS = ("source", "verification", "decision", "input", "output", "machine", "mixed", "builder_options",
                 "int8_ready", "calibration")
MANIFEST = "manifest.json"


def _read_json(path: Path, what: str, fix: str):
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        why = "not text"
    except json.JSONDecodeError as e:
        why = f"not JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    except OSError as e:
        why = f"unreadable ({e.strerror or type(e).__name__})"
    raise CardError(f"{path}: {what} is {why}; {fix}")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), f"a {type(value).__name__}")


def card_of(path: str | os.PathLike) -> dict | None:
    """The card beside an artifact (``<file>.json``), or None when it has none. A card that is there but
    is not a card is an error naming it, never a silent "no card"."""
    card = Path(str(path) + ".json")
    if not card.is_file():
        return None
    fix = (f"re-export {Path(path).name} (mstl-export), or delete {card.name} to use the artifact as an unverified "
           "one")
    d = _read_json(card, "the model card", fix)
    if not isinstance(d, dict):
        raise CardError(f"{card}: the model card is {_kind(d)}, not an object; {fix}")
    bad = next((k for k in _CARD_OBJECTS if d.get(k) is not None and not isinstance(d[k], dict)), None)
    if bad is None and d.get("labels") is not None and not (
            isinstance(d["labels"], list) and all(isinstance(v, str) for v in d["labels"])):
        bad = "labels"
    if bad:
        raise CardError(f"{card}: the model card's '{bad}' is {_kind(d[bad])}, not what mstl writes there; {fix}")
    shape = (d.get("input") or {}).get("shape")
    if shape is not None and not _image_shape(shape):
        raise CardError(f"{card}: the model card's input shape is {shape!r}, not [1, size, size, 3]; {fix}")
    return d


def _image_shape(shape) -> bool:
    return (isinstance(shape, list) and len(shape) == 4 and shape[0] == 1 and shape[3] == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shape) and shape[1] == shape[2] > 0)


def read_manifest(folder: str | os.PathLike) -> dict:
    """An exports folder's manifest.json, checked for what its readers use: an object whose
    ``artifacts`` is a list of entries each naming its file (``path`` or ``name``) and its ``format``."""
    path = Path(folder) / MANIFEST
    fix = ("re-export the folder (mstl-export), or give the artifact files themselves instead of the folder")
    m = _read_json(path, "the exports manifest", fix)
    if not isinstance(m, dict):
        raise CardError(f"{path}: the exports manifest is {_kind(m)}, not an object; {fix}")
    rows = m.get("artifacts")
    if not isinstance(rows, list):
        raise CardError(f"{path}: the exports manifest has {'no' if rows is None else _kind(rows) + ' as'} "
                        f"'artifacts' (a list of entries); {fix}")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise CardError(f"{path}: artifact entry {i} is {_kind(row)}, not an object; {fix}")
        name = row.get("path") or row.get("name")
        if not isinstance(name, str) or not name:
            raise CardError(f"{path}: artifact entry {i} names no file ('path'); {fix}")
        if not isinstance(row.get("format"), str) or not row["format"]:
            raise CardError(f"{path}: artifact entry {i} ({name}) has no 'format'; {fix}")
        if Path(name).name != name:
            raise CardError(f"{path}: artifact entry {i} ({name}) is not a file name inside the folder; {fix}")
    for key, want in (("source", dict), ("labels", list), ("bundle", dict)):
        if m.get(key) is not None and not isinstance(m[key], want):
            raise CardError(f"{path}: the exports manifest's '{key}' is {_kind(m[key])}; {fix}")
    return m


class FileState(NamedTuple):
    """What tells that a file was replaced or rewritten without reading it (a touch alone changes only
    mtime: the app re-hashes then)."""
    ino: int
    size: int
    mtime_ns: int


def file_state(path: str | os.PathLike) -> FileState:
    st = os.stat(path)
    return FileState(st.st_ino, st.st_size, st.st_mtime_ns)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files, artifacts)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unverified_reason(path: str | os.PathLike, card: dict | None) -> str | None:
    """Why the artifact at ``path`` does not count as verified, or None when it does. Only a card that
    records a passing export gate is a pass: no card, a failed gate and a gate that never ran are not
    (the app refuses to serve such a file; the bench marks its row NOT VERIFIED and recommends it not).
    Whether the file is the one the card describes is file_mismatch's question."""
    name = Path(path).name
    if not card:
        return (f"{name} has no model card ({name}.json): the export gate's verdict is unknown; re-export it, or "
                "copy the card with the artifact")
    gate = card.get("verification") or {}
    if gate.get("status") == "ok":
        return None
    if gate.get("status") == "failed":
        return f"{name} failed its export verification ({gate.get('reason') or 'no reason recorded'})"
    return f"{name} has no export verification in its card (gate {gate.get('status') or 'never run'}): re-export it"


def file_mismatch(path: str | os.PathLike, card: dict | None) -> str | None:
    """Why ``path`` is not the file its card describes (its sha256 differs), or None when it is or the
    card records no digest."""
    want = (card or {}).get("sha256")
    if not want:
        return None
    if sha256_file(path) != want:
        return f"{Path(path).name} is not the file its card describes (sha256 differs): re-export it, or it was replaced"
    return None
