"""Load test of the app over loopback: N requests from C concurrent clients to POST /predict.

Prints name=value lines: requests, concurrency, errors, p50_ms, p99_ms, throughput_rps.

    .venv/bin/python benchmarks/app_load.py [--model runs/latest/exports/classifier-int8.tflite]
                                            [--requests 1000] [--clients 8] [--image FILE]
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _app_process import free_port


def start_server(model: Path, port: int):
    import uvicorn
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    server = uvicorn.Server(uvicorn.Config(create_app(Classifier(model)), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("server did not start")
    return server, thread


def sample_jpeg(path: str | None) -> tuple[str, bytes]:
    if path:
        return Path(path).name, Path(path).read_bytes()
    from PIL import Image
    from mstl.data.synthetic import cxr_image
    img, _ = cxr_image("COVID-19", np.random.default_rng(0), 224)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return "sample.jpeg", buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/latest/exports/classifier-int8.tflite")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--image", default=None)
    a = ap.parse_args()
    import httpx
    model = Path(a.model)
    if not model.is_file():
        sys.exit(f"{model}: no such model; run `make demo` first or pass --model")
    port = free_port()
    server, thread = start_server(model, port)
    name, data = sample_jpeg(a.image)
    url = f"http://127.0.0.1:{port}/predict"
    per_client = [a.requests // a.clients + (1 if i < a.requests % a.clients else 0) for i in range(a.clients)]

    def client(n: int):
        lat, errors = [], 0
        with httpx.Client(timeout=30) as c:
            for _ in range(n):
                t = time.perf_counter()
                try:
                    r = c.post(url, files={"file": (name, data, "image/jpeg")})
                    ok = r.status_code == 200 and abs(sum(r.json()["probabilities"].values()) - 1) < 1e-6
                except httpx.HTTPError:
                    ok = False
                lat.append((time.perf_counter() - t) * 1000)
                errors += not ok
        return lat, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.clients) as pool:
        results = list(pool.map(client, per_client))
    wall = time.perf_counter() - t0
    server.should_exit = True
    thread.join(timeout=10)
    lat = np.concatenate([r[0] for r in results])
    errors = sum(r[1] for r in results)
    print(f"requests={len(lat)}")
    print(f"concurrency={a.clients}")
    print(f"errors={errors}")
    print(f"p50_ms={np.percentile(lat, 50):.2f}")
    print(f"p99_ms={np.percentile(lat, 99):.2f}")
    print(f"throughput_rps={len(lat) / wall:.1f}")
    print(f"# model {model} ({model.stat().st_size / 1e6:.2f} MB), image {name} ({len(data)} bytes), loopback", file=sys.stderr)


if __name__ == "__main__":
    main()
