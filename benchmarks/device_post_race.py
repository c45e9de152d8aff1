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
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

SERVE = """
import sys, uvicorn
from pathlib import Path
from mstl.edge.app.device import DeviceBench
from mstl.edge.app.inference import Classifier
from mstl.edge.app.server import create_app
model = Path(sys.argv[1])
app = create_app(Classifier(model, workers=1), device=DeviceBench(model.parent, n_samples=int(sys.argv[3])))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
"""
CAP = 1000  # device.MAX_STORED_ROWS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(model), str(port), str(a.samples)])

    def round_of(n: int) -> Counter:
        with httpx.Client(timeout=120) as c:
            sessions = [(c.get(base + "/device/manifest").json().get("session") or {}).get("id") for _ in range(n)]
        barrier = Barrier(n)

        def post(session):
            body = {"artifact": model.name, "runtime": "race", "backend": "wasm", "threads": 1, "runs": 10,
                    "load_ms": 10.0, "first_ms": 3.0, "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "mean": 1.1},
                    "probs": reference, "session": session, "device": {"hardware_concurrency": 4}}
            with httpx.Client(timeout=120) as c:
                barrier.wait()
                return c.post(base + "/device/results", json=body).status_code
        with ThreadPoolExecutor(n) as pool:
            return Counter(pool.map(post, sessions))
    try:
        with httpx.Client(timeout=120) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    c.get(base + "/health")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        sys.exit("the server did not start")
                    time.sleep(0.2)
        statuses = round_of(a.posts)
        files = sorted(folder.glob("*.json"))
        print(f"posts={a.posts}")
        print(f"statuses={dict(statuses)}")
        print(f"files_written={len(files)} distinct_names={len({f.name for f in files})}")
        for f in files:
            f.unlink()
        for i in range(CAP - 5):
            (folder / f"prefilled-{i:04d}.json").write_text("{}")
        statuses = round_of(a.near_cap)
        print(f"prefilled={CAP - 5} cap={CAP} posts={a.near_cap}")
        print(f"statuses_near_cap={dict(statuses)}")
        print(f"files_after={len(list(folder.glob('*.json')))}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
