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
import sys
import time
from pathlib import Path

import numpy as np
from _app_process import device_app_command, health_polled, rss_mb, running_app, statuses

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
    with running_app(device_app_command(model, a.samples)) as app:
        with httpx.Client(timeout=120) as c:
            c.get(app.base + "/device/manifest")  # the reference pass, before the clock starts

        def post(_):
            with httpx.Client(timeout=300) as c:
                return c.post(app.base + "/device/results", content=body,
                              headers={"content-type": "application/json"}).status_code
        with health_polled(app.base, interval_s=0.02, timeout_s=300) as polls:
            time.sleep(1.0)
            counted, seconds = statuses(post, a.posts, a.posters)
            time.sleep(0.5)
        health = np.array(polls)
        print(f"body_bytes={len(body)}")
        print(f"posters={a.posters} posts={a.posts}")
        print(f"statuses={dict(counted)}")
        print(f"health_polls={len(health)}")
        print(f"health_max_ms={health.max():.1f}")
        print(f"health_p99_ms={np.percentile(health, 99):.1f}")
        print(f"health_p50_ms={np.percentile(health, 50):.1f}")
        print(f"server_peak_rss_mb={rss_mb(app.process.pid, 'VmHWM'):.0f}")
        print(f"seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
