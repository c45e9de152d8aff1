"""The app under container-picture uploads (issue 23, item 1): N concurrent uploads of an .ico whose
directory says 16x16 and which embeds a huge black RGBA PNG (default 13000 x 13000: 676 MB decoded,
656 KB on the wire), while /health is polled from a process of its own. The server is `mstl-app` on a
tiny exported model (made here with this checkout's mstl unless --model is given), in its own process,
so its memory is its own. Prints name=value lines: peak_rss_mb, health_worst_s, status_codes, and
idle_rss_mb, rss_after_mb, upload_bytes, seconds.

    PYTHONPATH=src .venv/bin/python benchmarks/container_upload.py [--uploads 8] [--side 13000]
                                                                   [--model FILE.tflite] [--workers 2]
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from _app_process import health_polled, mstl_app_command, rss_mb, running_app, statuses

TINY_MODEL = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from mstl.tf_env import keras
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for i in range(60):
    d = root / "data" / "ab"[i % 2]
    d.mkdir(parents=True, exist_ok=True)
    a = np.clip(rng.uniform(30, 225) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(d / f"{i:03d}.png")
keras.utils.set_random_seed(0)
inp = keras.Input((32, 32, 3))
x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
x = keras.layers.Conv2D(4, 3, strides=2)(x)
x = keras.layers.GlobalAveragePooling2D()(x)
keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x)).save(root / "m.keras")
"""


def zero_png(width: int, height: int) -> bytes:
    """A black RGBA PNG compressed row by row: hundreds of megabytes of pixels in a few hundred KB."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + 4 * width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def container_ico(side: int) -> bytes:
    """An .ico whose one directory entry says 16x16 and whose image is a side x side PNG."""
    png = zero_png(side, side)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


def tiny_model(folder: Path) -> Path:
    """A verified fp32 TFLite (card included) of a 32x32 two-class model, via mstl-export."""
    bin_dir = Path(sys.executable).parent
    subprocess.run([sys.executable, "-c", TINY_MODEL, str(folder)], check=True, capture_output=True)
    subprocess.run([str(bin_dir / "mstl-export"), str(folder / "no-run"), "--model", str(folder / "m.keras"),
                    "--data", str(folder / "data"), "--format", "tflite", "--out", str(folder / "exports")],
                   check=True, capture_output=True)
    return folder / "exports" / "classifier-fp32.tflite"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="an exported .tflite with its card (default: make one)")
    ap.add_argument("--uploads", type=int, default=8)
    ap.add_argument("--side", type=int, default=13000)
    ap.add_argument("--workers", type=int, default=2, help="the app's interpreters (the issue's --workers 2)")
    a = ap.parse_args()
    import httpx
    model = a.model or tiny_model(Path(tempfile.mkdtemp(prefix="mstl-container-")))
    data = container_ico(a.side)
    command = mstl_app_command(model, "--workers", str(a.workers), "--device-samples", "0")
    with running_app(command) as app:
        pid = app.process.pid
        idle = rss_mb(pid, "VmRSS")

        def upload(_):
            with httpx.Client(timeout=600) as c:
                return c.post(app.base + "/predict", files={"file": ("icon.ico", data, "image/x-icon")}).status_code
        with health_polled(app.base, interval_s=0.05, timeout_s=60) as health_ms:
            time.sleep(0.5)
            codes, seconds = statuses(upload, a.uploads, a.uploads)
            time.sleep(1.0)
        print(f"upload_bytes={len(data)}")
        print(f"declared=16x16 embedded={a.side}x{a.side} RGBA uploads={a.uploads} workers={a.workers}")
        print(f"status_codes={dict(codes)}")
        print(f"seconds={seconds:.1f}")
        print(f"idle_rss_mb={idle:.0f}")
        print(f"peak_rss_mb={rss_mb(pid, 'VmHWM'):.0f}")
        print(f"rss_after_mb={rss_mb(pid, 'VmRSS'):.0f}")
        print(f"health_worst_s={max(health_ms) / 1000:.3f}")


if __name__ == "__main__":
    main()
