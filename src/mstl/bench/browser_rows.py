"""Rows measured in a browser (the app's /device page) for an exports folder: where they are kept and
how mstl-bench reads them back (`--include-device-results`). No TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cards import card_of
from ..progress import warn


def device_dir(exports: Path) -> Path:
    """RUN_DIR/bench/device for RUN_DIR/exports: beside the run's other bench results, and kept when the
    exports folder is replaced by a re-export."""
    return Path(exports).parent / "bench" / "device"


def load_device_rows(exports: Path, current_only: bool = True) -> list[dict[str, Any]]:
    """Browser rows stored for this exports folder; with ``current_only``, those measured on the artifacts
    that are there now (same sha256) - a row of an artifact since re-exported is left out."""
    folder = device_dir(Path(exports))
    rows = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            row = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warn(f"{p}: left out, not a readable device row ({e})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("artifact"), str):
            warn(f"{p}: left out, not a device row (no artifact named)")
            continue
        if current_only:
            card = card_of(Path(exports) / row.get("artifact", ""))
            if not card or card.get("sha256") != row.get("sha256"):
                continue
        row["saved_as"] = p.name
        rows.append(row)
    return rows
