"""How much does mstl-bench's harness add to a bare LiteRT invoke() loop, and what does an app pay on
top of the model for decoding and resizing a file?

Prints name=value lines:
  harness_ratio     mstl-bench p50 / bare Interpreter.invoke() p50, 1 thread (goal <= 1.10)
  e2e_ratio_224     file->label p50 / model p50 for a 224 px JPEG (goal <= 2)
  e2e_ratio_12mp    the same for a 12-megapixel photo (JPEG draft-mode decoding)
Model: MobileNetV2 width 1.0 at 150 px, full int8 TFLite (uint8 input), built here by mstl's own
export path; ImageNet weights from --weights (or ../shared/weights when present), else random.

    .venv/bin/python benchmarks/bench_overhead.py [--runs 300] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def build_int8(workdir: Path, weights: str) -> Path:
    from mstl.config import ModelConfig
    from mstl.data.synthetic import cxr_image
    from mstl.export.tflite import build_int8 as build
    from mstl.model import build_classifier

    rng = np.random.default_rng(0)
    cal = np.stack([np.repeat(np.asarray(Image.fromarray(cxr_image(c, rng, 150)[0]))[..., None], 3, -1)
                    for c in ("COVID-19", "Normal", "Non-COVID") * 34]).astype(np.float32)
    model = build_classifier(ModelConfig(alpha=1.0, weights=weights, dropout=0.0), 150, 2, "imagenet",
                             calibration_images=cal[:64])
    path = workdir / "mobilenetv2-150-int8.tflite"
    from mstl.edge.core.formats import BuildOptions
    path.write_bytes(build(model, workdir, BuildOptions(calibration=cal)))
    return path


def bare_p50(path: Path, x: np.ndarray, runs: int, warmup: int) -> float:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    idx = it.get_input_details()[0]["index"]
    it.set_tensor(idx, x)
    for _ in range(warmup):
        it.invoke()
    s = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter_ns()
        it.invoke()
        s[i] = time.perf_counter_ns() - t
    return float(np.median(s)) / 1e6


def harness_p50(path: Path, x: np.ndarray, runs: int, warmup: int) -> float:
    from mstl.edge.core.timing import latency
    from mstl.edge.core.runtimes import load_runtime
    return latency(load_runtime(path, threads=1), x, runs, warmup)["p50"]


def photo(size: tuple[int, int], path: Path) -> Path:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each loop (drift cancels)")
    ap.add_argument("--weights", default=None)
    a = ap.parse_args()
    local = SHARED / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
    weights = a.weights or os.environ.get("MSTL_WEIGHTS") or (str(local) if local.exists() else "none")
    from mstl.edge.bench.measure import end_to_end
    from mstl.edge.core.runtimes import load_runtime

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        model = build_int8(work, weights)
        print(f"# built {model.name} ({model.stat().st_size / 1e6:.2f} MB, weights {weights}) in {time.monotonic() - t0:.0f}s",
              file=sys.stderr)
        x = np.random.default_rng(0).integers(0, 255, (1, 150, 150, 3), dtype=np.uint8)
        bare, harness = [], []
        for _ in range(a.rounds):
            bare.append(bare_p50(model, x, a.runs, a.warmup))
            harness.append(harness_p50(model, x, a.runs, a.warmup))
        b, h = float(np.median(bare)), float(np.median(harness))
        print(f"bare_invoke_p50_ms={b:.3f}")
        print(f"mstl_bench_p50_ms={h:.3f}")
        print(f"harness_ratio={h / b:.3f}")

        rt = load_runtime(model, threads=1)
        xray = next(iter(sorted((SHARED / "data" / "chest-xray-pneumonia" / "test" / "NORMAL").glob("*.jpeg"))), None)
        f224 = xray if xray is not None else photo((224, 224), work / "x224.jpeg")
        f12 = photo((4000, 3000), work / "photo-12mp.jpeg")
        for name, f in (("224", f224), ("12mp", f12)):
            e = end_to_end(rt, [str(f)], a.runs // 3)["p50"]
            print(f"e2e_p50_ms_{name}={e:.3f}")
            print(f"e2e_ratio_{name}={e / b:.3f}")
        with Image.open(f12) as im:
            t = time.perf_counter_ns()
            im.load()
            full = (time.perf_counter_ns() - t) / 1e6
        print(f"full_decode_12mp_ms={full:.1f}")
        from mstl.edge.core.machine import cpu_model
        print(f"# measured on {cpu_model()}, {os.cpu_count()} cores, 1 thread; 224 px file: {f224.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
