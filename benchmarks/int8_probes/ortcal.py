"""ONNX int8 of the int8-ready real model under other activation-range calibrations."""
import sys, json, time, tempfile, numpy as np
from pathlib import Path
from mstl.edge.core.filelist import read_list
from mstl.edge.core.preprocess import Preprocess
from mstl.model import load_classifier
from mstl.export.gate import split
from mstl.export.bias_correction import int8_ready
from mstl.export import onnx as xo
from mstl.export.diagnose import array_reader
from mstl.edge.core.metrics import top1_agreement
from mstl.data.splits import stratified_sample
from mstl.edge.core.runtimes import load_runtime
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static, CalibrationMethod
run = Path(sys.argv[1]); ex = run / "exports"
gate_src, _ = read_list(ex / "gate.tsv"); ref = np.load(ex / "gate-reference.npy"); px = np.load(sys.argv[2])
conf = ~split(len(px)); sel = ~conf
trs, trl = read_list(run / "target_train.tsv")
cpx = Preprocess(150, "bilinear").load_many([trs[i] for i in stratified_sample(np.asarray(trl), 200, 0)])
m = load_classifier(run / json.loads((run / "selection.json").read_text())["model"]); int8_ready(m, cpx)
work = Path(tempfile.mkdtemp(prefix="ortcal-")); pre = xo.float_graph(m, work)
def ld(p): p = np.clip(p, 1e-6, 1); return np.log(p[:, 1]) - np.log(p[:, 0])
def evaluate(name, data):
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    p = np.concatenate([s.run(None, {"input": px[i:i+64].astype(np.float32)})[0] for i in range(0, len(px), 64)])
    tc, ts = top1_agreement(p[conf], ref[conf]), top1_agreement(p[sel], ref[sel]); e = ld(p) - ld(ref); near = np.abs(ref[:, 1] - .5) < .25
    print(f"{name}: selection {ts['flips']} flips, confirmation {100*tc['agreement']:.2f}% ({tc['flips']} of {tc['n_compared']}); err near boundary {e[near].mean():+.3f} +- {e[near].std():.3f}", flush=True)
variants = [("minmax", CalibrationMethod.MinMax, {}),
            ("percentile-99.999", CalibrationMethod.Percentile, {"CalibPercentile": 99.999}),
            ("percentile-99.99", CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
            ("entropy", CalibrationMethod.Entropy, {}),
            ("minmax-moving", CalibrationMethod.MinMax, {"CalibMovingAverage": True})]
only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
for act in ("int8",):
    for name, method, extra in variants:
        if only and name not in only: continue
        t = time.time(); out = work / f"{name}.onnx"
        quantize_static(str(pre), str(out), array_reader("input", cpx), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=method,
                        extra_options={"TensorQuantOverrides": xo._pixel_ranges_of(pre), **extra})
        evaluate(f"s8s8 {name} ({time.time()-t:.0f} s)", out.read_bytes())
