"""Rows measured in a browser (the app's /device page) for an exports folder: where they are kept and
how mstl-bench reads them back (`--include-device-results`). No TensorFlow.

What such a row proves, and what it cannot: the app that stored it checked that the artifact was the
verified file it served, that the numbers are numbers in range, and - against its own native run -
how often the posted answers agree with its own; it issued the page load's session the row echoes.
It cannot know that a browser, its /device page or the device named computed the row: the timings,
runtime and device are the poster's word, and the answers may come from any program that ran the
same model on the same images."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .cards import card_of
from .progress import warn

PROVENANCE = {
    "kind": "self-reported by a web page (the app's /device page or anything that posts like it)",
    "server_checked": "the artifact is the verified file the app served (sha256); every figure is a finite number "
                      "in range, percentiles in order; agreement is the app's own comparison of the posted "
                      "probabilities with its native run on held-out images whose answers it never published; "
                      "the post echoed a page load's session the app issued",
    "not_provable": "that a browser, the /device page or the device named computed it: timings, runtime, backend "
                    "and device are the poster's word, and the probabilities may come from any program that ran "
                    "the same model on the same images",
}
OLD_PROVENANCE = {**PROVENANCE, "kind": "self-reported by a web page, stored by an app older than its session and "
                                        "probability checks (its agreement may have been computed from answers "
                                        "the app published)"}


def device_dir(exports: Path) -> Path:
    """RUN_DIR/bench/device for RUN_DIR/exports: beside the run's other bench results, and kept when the
    exports folder is replaced by a re-export."""
    return Path(exports).parent / "bench" / "device"


def is_browser_row(row: dict[str, Any]) -> bool:
    return row.get("measured_in") == "browser"


def row_name(row: dict[str, Any]) -> str:
    """How a row is named in a message: a browser row says that it is one, and which file holds it."""
    if not is_browser_row(row):
        return row["artifact"]
    return f"{row['artifact']} (a browser row, self-reported to the app's /device page: {row.get('loaded_from') or row.get('saved_as')})"


def load_device_rows(exports: Path, current_only: bool = True) -> list[dict[str, Any]]:
    """Browser rows stored for this exports folder; with ``current_only``, those measured on the artifacts
    that are there now (same sha256) - a row of an artifact since re-exported is left out, and a warning
    says how many, of which artifact, and why."""
    folder = device_dir(Path(exports))
    rows = []
    left_out: dict[str, list[str]] = defaultdict(list)
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
            why = _not_current(Path(exports), row)
            if why:
                left_out[why].append(p.name)
                continue
        row["saved_as"] = p.name
        row["loaded_from"] = str(p)
        row.setdefault("provenance", OLD_PROVENANCE)
        rows.append(row)
    for why, names in left_out.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        warn(f"{folder}: {len(names)} browser row(s) left out - {why} ({shown}); run the /device page again "
             "against an app serving these exports")
    return rows


def _not_current(exports: Path, row: dict[str, Any]) -> str | None:
    """Why a stored row does not describe the artifact that is in the exports folder now, or None."""
    name = row["artifact"]
    try:
        card = card_of(exports / name) if (exports / name).is_file() else None
    except (OSError, ValueError):
        return f"the card of {name} in {exports} is not readable JSON"
    if card is None:
        return f"{name} is not in {exports} (or has no card)"
    if card.get("sha256") != row.get("sha256"):
        return (f"measured on a {name} with sha256 {str(row.get('sha256'))[:12]}..., the file there now is "
                f"{str(card.get('sha256'))[:12]}... (re-exported since)")
    return None
