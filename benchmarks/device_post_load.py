"""Responsiveness of the app while large JSON bodies are posted to POST /device/results: C concurrent
posters each send B bytes of JSON (default: an object of 800k keys, ~9.5 MB, under the picture-upload
limit), while /health is polled from another process. The server runs in its own process. Prints
name=value lines: body_bytes, posters, statuses, health_max_ms, health_p99_ms, health_p50_ms,
server_peak_rss_mb, seconds.

    .venv/bin/python benchmarks/device_post_load.py --model RUN_DIR/exports/classifier-int8.tflite
                                                    [--posters 6] [--posts 12] [--keys 800000]

It writes no row (the body is not a row), but give it a copy of a run dir all the same.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

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

POLL = """
import sys, time, os, httpx
base, stop = sys.argv[1], sys.argv[2]
with httpx.Client(timeout=300) as c:
    while not os.path.exists(stop):
        t = time.perf_counter()
        try:
            c.get(base + "/health")
        except httpx.HTTPError:  # counted at the time it took: a stall is the figure wanted
            pass
        print(f"{(time.perf_counter() - t) * 1000:.3f}", flush=True)
        time.sleep(0.02)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--posters", type=int, default=6)
    ap.add_argument("--posts", type=int, default=12, help="posts in all")
    ap.add_argument("--keys", type=int, default=800_000)
    ap.add_argument("--samples", type=int, default=100)
    a = ap.parse_args()
    import httpx
    model = Path(a.model)
    if not model.is_file():
        sys.exit(f"{model}: no such model; give an exported .tflite or .onnx of a run dir")
    body = b"{" + b",".join(b'"k%d":0' % i for i in range(a.keys)) + b"}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(model), str(port), str(a.samples)])
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
            c.get(base + "/device/manifest")  # the reference pass, before the clock starts
        with tempfile.TemporaryDirectory() as tmp:
            stop = Path(tmp) / "stop"
            poll = subprocess.Popen([sys.executable, "-c", POLL, base, str(stop)], stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)

            def post(_):
                with httpx.Client(timeout=300) as c:
                    try:
                        return c.post(base + "/device/results", content=body,
                                      headers={"content-type": "application/json"}).status_code
                    except httpx.HTTPError as e:
                        return type(e).__name__
            t0 = time.perf_counter()
            with ThreadPoolExecutor(a.posters) as pool:
                statuses = Counter(pool.map(post, range(a.posts)))
            seconds = time.perf_counter() - t0
            time.sleep(0.5)
            stop.touch()
            out, _ = poll.communicate(timeout=60)
        health = np.array([float(v) for v in out.split()])
        print(f"body_bytes={len(body)}")
        print(f"posters={a.posters} posts={a.posts}")
        print(f"statuses={dict(statuses)}")
        print(f"health_polls={len(health)}")
        print(f"health_max_ms={health.max():.1f}")
        print(f"health_p99_ms={np.percentile(health, 99):.1f}")
        print(f"health_p50_ms={np.percentile(health, 50):.1f}")
        print(f"server_peak_rss_mb={peak_rss_mb(server.pid):.0f}")
        print(f"seconds={seconds:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
