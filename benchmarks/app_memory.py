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
import time

import numpy as np
from _app_process import health_polled, mstl_app_command, rss_mb, running_app, statuses


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
    with running_app(mstl_app_command(a.model, "--max-upload-mb", "10"), startup_s=60, port=a.port) as app:
        idle = rss_mb(app.process.pid, "VmRSS")

        def upload(_):
            with httpx.Client(timeout=300) as c:
                return c.post(app.base + "/predict", files={"file": ("bomb.png", data, "image/png")}).status_code
        # /health is polled from a process of its own: polled from this process it also measured the
        # 60 uploading threads' hold on this interpreter's GIL.
        with health_polled(app.base, interval_s=0.1, timeout_s=30) as health:
            counted, seconds = statuses(upload, a.uploads, a.uploads)
            time.sleep(1.0)
        print(f"upload_bytes={len(data)}")
        print(f"picture={a.picture}")
        print(f"pixels={pixels}")
        print(f"uploads={a.uploads}")
        print(f"statuses={dict(counted)}")
        print(f"seconds={seconds:.1f}")
        print(f"server_rss_idle_mb={idle:.0f}")
        print(f"server_peak_rss_mb={rss_mb(app.process.pid, 'VmHWM'):.0f}")
        print(f"server_rss_after_mb={rss_mb(app.process.pid, 'VmRSS'):.0f}")
        print(f"health_p50_ms={np.percentile(health, 50):.1f}")
        print(f"health_max_ms={max(health):.1f}")


if __name__ == "__main__":
    main()
