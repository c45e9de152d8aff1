"""Memory and responsiveness of the app under hostile uploads: C concurrent uploads of a small PNG with
a huge pixel count (default 6300 x 6300, ~40 megapixels, under the app's cap), while /health is polled.
The server runs in its own process, so its memory is its own. Prints name=value lines:
server_peak_rss_mb, server_rss_after_mb, server_rss_idle_mb, health_max_ms, health_p50_ms, statuses, seconds.

    .venv/bin/python benchmarks/app_memory.py [--model runs/demo/exports/classifier-int8.tflite]
                                              [--uploads 60] [--side 6300] [--picture lines|16bit|sliver]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def bomb_png(side: int, kind: str = "lines") -> tuple[bytes, int]:
    """A small PNG of about side x side pixels: 8-bit grey lines, the same as 16-bit grey, or a sliver
    of the same pixel count two pixels wide. Returns the bytes and the pixel count."""
    from PIL import Image, ImageDraw
    if kind == "sliver":
        img = Image.new("L", (2, side * side // 2), 40)
    else:
        img = Image.new("L", (side, side), 40)
        draw = ImageDraw.Draw(img)
        for k in range(0, side, side // 12):
            draw.line([(k, 0), (side - k, side)], fill=200, width=9)
        if kind == "16bit":
            img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue(), img.width * img.height


def rss_mb(pid: int, key: str) -> float:
    from mstl.edge.core.machine import proc_status_mb
    mb = proc_status_mb(key, pid)
    return float("nan") if mb is None else mb


POLL = """
import sys, time, os, httpx
base, stop = sys.argv[1], sys.argv[2]
with httpx.Client(timeout=30) as c:
    while not os.path.exists(stop):
        t = time.perf_counter()
        c.get(base + "/health")
        print(f"{(time.perf_counter() - t) * 1000:.3f}", flush=True)
        time.sleep(0.1)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/demo/exports/classifier-int8.tflite")
    ap.add_argument("--uploads", type=int, default=60)
    ap.add_argument("--side", type=int, default=6300)
    ap.add_argument("--picture", choices=("lines", "16bit", "sliver"), default="lines")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    a = ap.parse_args()
    import httpx
    data, pixels = bomb_png(a.side, a.picture)
    if not a.port:
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            a.port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("mstl-app")
    server = subprocess.Popen([str(exe), "--model", a.model, "--port", str(a.port), "--max-upload-mb", "10"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{a.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("server did not start: " + (server.stderr.read() if server.poll() is not None else ""))
            time.sleep(0.2)
        idle = rss_mb(server.pid, "VmRSS")
        # /health is polled from a process of its own, as a load balancer would: polled from this
        # process it also measured the 60 uploading threads' hold on this interpreter's GIL.
        stop_file = Path(tempfile.mkdtemp(prefix="mstl-health-")) / "stop"
        poller = subprocess.Popen([sys.executable, "-c", POLL, base, str(stop_file)], stdout=subprocess.PIPE, text=True)

        def upload(_):
            try:
                with httpx.Client(timeout=300) as c:
                    return c.post(base + "/predict", files={"file": ("bomb.png", data, "image/png")}).status_code
            except httpx.HTTPError as e:
                return type(e).__name__
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.uploads) as pool:
            statuses = Counter(pool.map(upload, range(a.uploads)))
        seconds = time.perf_counter() - t0
        time.sleep(1.0)
        stop_file.touch()
        health = [float(v) for v in poller.communicate(timeout=60)[0].split()]
        print(f"upload_bytes={len(data)}")
        print(f"picture={a.picture}")
        print(f"pixels={pixels}")
        print(f"uploads={a.uploads}")
        print(f"statuses={dict(statuses)}")
        print(f"seconds={seconds:.1f}")
        print(f"server_rss_idle_mb={idle:.0f}")
        print(f"server_peak_rss_mb={rss_mb(server.pid, 'VmHWM'):.0f}")
        print(f"server_rss_after_mb={rss_mb(server.pid, 'VmRSS'):.0f}")
        print(f"health_p50_ms={np.percentile(health, 50):.1f}")
        print(f"health_max_ms={max(health):.1f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
