"""The maintained int8 libraries against mstl's own recipes, on an exported run: each library
quantizes the run's fp32 artifact from the same calibration images mstl used, and is scored on the
export gate's own images against the Keras model's answers (exports/gate.tsv, gate-reference.npy), so
its figures sit beside the card's. Prints one name=value line per figure.

    .venv/bin/python benchmarks/quantizer_libraries.py RUN_DIR [--only nncf,aeq] [--int16-images 600]

- NNCF 3.4 (`nncf.quantize`, ONNX backend) on classifier-fp32.onnx: fast bias correction on, with and
  without its overflow fix (7-bit weights against AVX2 saturation).
- LiteRT's ai-edge-quantizer 0.10 on classifier-fp32.tflite: recipes static_wi8_ai8 and static_wi8_ai16
  (int16 activations run on LiteRT's reference kernels - slow - so --int16-images caps its images).

Needs `pip install nncf ai-edge-quantizer` (not dependencies of mstl: this is the measurement that
decided against them); a library that is missing is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _images(run: Path):
    from mstl.edge.core.filelist import read_list
    from mstl.export.gate import split
    from mstl.edge.core.metrics import decisive
    from mstl.edge.core.preprocess import Preprocess
    ex = run / "exports"
    gate_src, _ = read_list(ex / "gate.tsv")
    ref = np.load(ex / "gate-reference.npy")
    train_src, _ = read_list(run / "target_train.tsv")
    in_gate = set(gate_src)
    calibration = [s for s in train_src if s not in in_gate]  # the training images that calibrated mstl's
    prep = Preprocess.from_card(json.loads((ex / "classifier-fp32.tflite.json").read_text()))
    clear = decisive(ref)  # the gate's rule: ties are not judged
    sel = split(len(gate_src))
    return prep.load_many(gate_src), ref, prep.load_many(calibration).astype(np.float32), sel & clear, ~sel & clear


def _score(tag: str, artifact: Path, px, ref, sel, conf, limit: int | None = None) -> None:
    from mstl.edge.core.runtimes import load_runtime
    rt = load_runtime(artifact)
    idx = np.flatnonzero(sel | conf)
    if limit:
        idx = np.flatnonzero(conf)[:limit]
    t = time.perf_counter()
    probs = rt.predict(px[idx])
    ms = 1000 * (time.perf_counter() - t) / len(idx)
    same = probs.argmax(1) == ref[idx].argmax(1)
    for part, mask in (("selection", sel[idx]), ("confirmation", conf[idx])):
        if mask.any():
            print(f"{tag}_{part}_agreement={same[mask].mean():.4f}")
            print(f"{tag}_{part}_flips={int((~same[mask]).sum())}_of_{int(mask.sum())}")
    print(f"{tag}_max_abs_diff={np.abs(probs - ref[idx]).max():.4f}")
    print(f"{tag}_ms_per_image_1_thread={ms:.1f}")


def _nncf(run: Path, data, work: Path) -> None:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    px, ref, cal, sel, conf = data
    model = onnx.load(str(run / "exports" / "classifier-fp32.onnx"))
    name = model.graph.input[0].name
    dataset = nncf.Dataset([cal[i:i + 1] for i in range(len(cal))], lambda x: {name: x})
    for tag, fix in (("nncf", OverflowFix.DISABLE), ("nncf_overflow_fix", OverflowFix.ENABLE)):
        t = time.perf_counter()
        q = nncf.quantize(model, dataset, subset_size=len(cal), fast_bias_correction=True,
                          advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix))
        out = work / f"{tag}.onnx"
        onnx.save(q, str(out))
        print(f"{tag}_quantize_seconds={time.perf_counter() - t:.1f}")
        _score(tag, out, px, ref, sel, conf)


def _aeq(run: Path, data, work: Path, int16_images: int) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import Quantizer, recipe
    px, ref, cal, sel, conf = data
    fp32 = run / "exports" / "classifier-fp32.tflite"
    signatures = Interpreter(str(fp32)).get_signature_list()
    key = next(iter(signatures))
    inp = signatures[key]["inputs"][0]
    for tag, make, limit in (("aeq_wi8_ai8", recipe.static_wi8_ai8, None),
                             ("aeq_wi8_ai16", recipe.static_wi8_ai16, int16_images)):
        q = Quantizer(str(fp32))
        q.load_quantization_recipe(make())
        t = time.perf_counter()
        result = q.calibrate({key: [{inp: cal[i:i + 1]} for i in range(len(cal))]})
        out = work / f"{tag}.tflite"
        q.quantize(result).export_model(str(out), overwrite=True)
        print(f"{tag}_quantize_seconds={time.perf_counter() - t:.1f}")
        _score(tag, out, px, ref, sel, conf, limit)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--only", default="nncf,aeq")
    ap.add_argument("--int16-images", type=int, default=600, help="confirmation images for the int16 recipe")
    args = ap.parse_args()
    from mstl.edge.core.machine import cpu_flags, cpu_model
    print(f"cpu={cpu_model()}")
    print(f"cpu_flags={','.join(sorted(cpu_flags()))}")
    data = _images(args.run_dir)
    print(f"gate_selection_images={int(data[3].sum())} gate_confirmation_images={int(data[4].sum())} "
          f"calibration_images={len(data[2])}")
    with tempfile.TemporaryDirectory() as tmp:
        for lib in args.only.split(","):
            try:
                _nncf(args.run_dir, data, Path(tmp)) if lib == "nncf" else _aeq(args.run_dir, data, Path(tmp), args.int16_images)
            except ImportError as e:
                print(f"{lib}: not installed ({e.name}); pip install nncf ai-edge-quantizer", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
