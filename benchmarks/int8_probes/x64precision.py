"""ONNX Runtime's two documented ways to exact int8 products on x86 without VNNI, measured against the
7-bit weights mstl ships for such CPUs (issue 19, point 3).

On AVX2 without VNNI, ONNX Runtime's u8s8 kernels add byte-pair products in int16 with saturation
(VPMADDUBSW). Its documentation offers (a) U8U8 (uint8 weights: kernels that widen to int16 first) and
(b) the session option ``session.x64quantprecision`` (its PR 12088: u8s8 matrix products turned into
u8u8 at load time where the weights leave [-64, 63]). This probe builds, from the run's exported fp32
ONNX graph and the export's own 200 calibration images, the same static QDQ model three ways - u8s8
with 8-bit weights, u8s8 with 7-bit weights (``reduce_range``, what ``--portable-int8`` ships) and u8u8
- and runs each natively (this CPU) and under ``qemu-x86_64-static -cpu Haswell`` (AVX2 + FMA, no
AVX-512, no VNNI), u8s8 8-bit also with ``session.x64quantprecision=1``. Printed: agreement with the
Keras model on the gate's confirmation images, max |diff| and top-1 changes emulated vs native, and
native p50 latency at 1 thread (emulated timings mean nothing; native ones are this CPU's only).

    PYTHONPATH=src .venv/bin/python benchmarks/int8_probes/x64precision.py RUN_DIR [IMAGES] [native]

``native`` skips the emulated run (the native timings alone, e.g. again on a machine with no other job).
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKER = "--worker"


def _session(path: str, config: dict):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _outputs(sess, pixels: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: pixels[i:i + 1].astype(np.float32)})[0] for i in range(len(pixels))]
    return np.concatenate(out)


def worker(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    pixels = np.load(spec["pixels"])
    res, times = {}, {}
    for key, (path, config) in spec["variants"].items():
        sess = _session(path, config)
        res[key] = _outputs(sess, pixels)
        if spec["time"]:
            one = pixels[:1].astype(np.float32)
            name = sess.get_inputs()[0].name
            for _ in range(10):
                sess.run(None, {name: one})
            t = []
            for _ in range(100):
                t0 = time.perf_counter()
                sess.run(None, {name: one})
                t.append(time.perf_counter() - t0)
            times[key] = float(np.median(t) * 1e3)
    np.savez(out_path, **res)
    Path(out_path).with_suffix(".json").write_text(json.dumps(times))


def _run(variants: dict, pixels: Path, emulate: bool, timed: bool, tmp: Path):
    from mstl.edge.bench.emulate import emulator
    tag = "emulated" if emulate else "native"
    spec, out = tmp / f"spec-{tag}.json", tmp / f"out-{tag}.npz"
    spec.write_text(json.dumps({"variants": variants, "pixels": str(pixels), "time": timed}))
    cmd = [sys.executable, __file__, WORKER, str(spec), str(out)]
    if emulate:
        cmd = [emulator(), "-cpu", "Haswell"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{tag} run failed: {r.stderr[-1500:]}")
    with np.load(out) as z:
        return {k: z[k] for k in z.files}, json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import calibration_pixels
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mstl.edge.bench.emulate import confirmation, emulator
    from mstl.edge.core.cards import read_manifest
    from mstl.edge.core.filelist import load_sources
    from mstl.edge.core.machine import cpu_flags, cpu_model
    from mstl.edge.core.metrics import top1_agreement
    from mstl.export.diagnose import array_reader
    from mstl.export.onnx import INPUT_NAME, _pixel_ranges_of

    if emulator() is None and sys.argv[3:4] != ["native"]:
        raise SystemExit("qemu-x86_64-static not found: install Debian's qemu-user-static")
    run = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    ex = run / "exports"
    manifest = read_manifest(ex)
    sources, reference = confirmation(ex, n)
    pixels = load_sources(sources, manifest["image_size"], manifest["resize_method"])
    cal = calibration_pixels(run)
    tmp = Path(tempfile.mkdtemp(prefix="x64prec-"))
    np.save(tmp / "pixels.npy", pixels)
    pre = tmp / "pre.onnx"
    quant_pre_process(str(ex / "classifier-fp32.onnx"), str(pre), skip_symbolic_shape=True)
    builds = {"u8s8-w8": (QuantType.QInt8, False), "u8s8-w7": (QuantType.QInt8, True), "u8u8-w8": (QuantType.QUInt8, False)}
    paths = {}
    for key, (wt, rr) in builds.items():
        out = tmp / f"{key}.onnx"
        quantize_static(str(pre), str(out), array_reader(INPUT_NAME, cal), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=wt, per_channel=True, reduce_range=rr,
                        extra_options={"TensorQuantOverrides": _pixel_ranges_of(pre)})
        paths[key] = str(out)
    variants = {"fp32": (str(ex / "classifier-fp32.onnx"), {}),
                **{k: (p, {}) for k, p in paths.items()},
                "u8s8-w8+x64quantprecision": (paths["u8s8-w8"], {"session.x64quantprecision": "1"})}
    native, t_native = _run(variants, tmp / "pixels.npy", False, True, tmp)
    only_native = sys.argv[3:4] == ["native"]
    emulated = native if only_native else _run(variants, tmp / "pixels.npy", True, False, tmp)[0]
    print(f"cpu={cpu_model()}")
    print(f"cpu_flags={','.join(cpu_flags())}")
    print(f"images={len(pixels)} (confirmation, {run.name})")
    for key in variants:
        a_n = top1_agreement(native[key], reference)
        a_e = top1_agreement(emulated[key], reference)
        diff = float(np.abs(emulated[key] - native[key]).max())
        changed = int(np.sum(emulated[key].argmax(1) != native[key].argmax(1)))
        there = "" if only_native else (f"emulated Haswell {100 * a_e['agreement']:.2f}% ({a_e['flips']} flips); emulated vs "
                                        f"native max |diff| {diff:.6f}, top-1 changed {changed}; ")
        print(f"{key}: native agreement {100 * a_n['agreement']:.2f}% ({a_n['flips']} flips of {a_n['n_compared']}), "
              f"{there}native p50 1 thread {t_native[key]:.2f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER]:
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
