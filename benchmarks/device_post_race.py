"""Concurrent POST /device/results over loopback: N valid rows at once (each with its own page load's
session, where the app issues one), then the same into a rows folder that holds CAP - K rows. Prints
name=value lines: posts, statuses, files_written, distinct_names, and for the second round
prefilled, cap, statuses_near_cap, files_after (the cap holds when files_after == cap).

    .venv/bin/python benchmarks/device_post_race.py --model COPY_OF_RUN_DIR/exports/classifier-fp32.onnx
                                                    [--posts 20] [--near-cap 40]

It writes rows into RUN_DIR/bench/device (and empties that folder first): give it a copy of a run dir.
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path
from threading import Barrier

from _app_process import device_app_command, running_app, statuses

CAP = 1000  # device.MAX_STORED_ROWS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--posts", type=int, default=20)
    ap.add_argument("--near-cap", type=int, default=40, help="posts into a folder 5 rows short of the cap")
    ap.add_argument("--samples", type=int, default=20)
    a = ap.parse_args()
    import httpx
    from mstl.edge.app.device import DeviceBench
    model = Path(a.model)
    folder = model.parent.parent / "bench" / "device"
    shutil.rmtree(folder, ignore_errors=True)
    reference = DeviceBench(model.parent, n_samples=a.samples).reference(model.name).tolist()
    with running_app(device_app_command(model, a.samples)) as app:

        def round_of(n: int) -> Counter:
            with httpx.Client(timeout=120) as c:
                sessions = [(c.get(app.base + "/device/manifest").json().get("session") or {}).get("id")
                            for _ in range(n)]
            barrier = Barrier(n)

            def post(i):
                body = {"artifact": model.name, "runtime": "race", "backend": "wasm", "threads": 1, "runs": 10,
                        "load_ms": 10.0, "first_ms": 3.0,
                        "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "mean": 1.1},
                        "probs": reference, "session": sessions[i], "device": {"hardware_concurrency": 4}}
                with httpx.Client(timeout=120) as c:
                    barrier.wait()
                    return c.post(app.base + "/device/results", json=body).status_code
            return statuses(post, n, n)[0]
        counted = round_of(a.posts)
        files = sorted(folder.glob("*.json"))
        print(f"posts={a.posts}")
        print(f"statuses={dict(counted)}")
        print(f"files_written={len(files)} distinct_names={len({f.name for f in files})}")
        for f in files:
            f.unlink()
        for i in range(CAP - 5):
            (folder / f"prefilled-{i:04d}.json").write_text("{}")
        counted = round_of(a.near_cap)
        print(f"prefilled={CAP - 5} cap={CAP} posts={a.near_cap}")
        print(f"statuses_near_cap={dict(counted)}")
        print(f"files_after={len(list(folder.glob('*.json')))}")


if __name__ == "__main__":
    main()
