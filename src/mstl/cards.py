"""Model cards beside exported artifacts (``<file>.json``): reading one, and checking that a file is
the one its card describes. No TensorFlow: the bench and the app on a device use these."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def card_of(path: str | os.PathLike) -> dict | None:
    card = Path(str(path) + ".json")
    return json.loads(card.read_text()) if card.is_file() else None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files, artifacts)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_mismatch(path: str | os.PathLike, card: dict | None) -> str | None:
    """Why ``path`` is not the file its card describes (its sha256 differs), or None when it is or the
    card records no digest."""
    want = (card or {}).get("sha256")
    if not want:
        return None
    if sha256_file(path) != want:
        return f"{Path(path).name} is not the file its card describes (sha256 differs): re-export it, or it was replaced"
    return None
