"""ONNX s8s8 of the int8-ready real model with groups of layers in float."""
import sys, json, time, tempfile, numpy as np, onnx
from pathlib import Path
exec(open(Path(__file__).with_name("ortcal.py")).read().split("variants = [")[0])
g = onnx.load(str(pre)).graph
convs = [n for n in g.node if n.op_type == "Conv"]
def group(n): return next((a.i for a in n.attribute if a.name == "group"), 1)
dw = [n.name for n in convs if group(n) > 1]; pw = [n.name for n in convs if group(n) == 1]
print(len(dw), "depthwise", len(pw), "other convs; ops:", sorted({n.op_type for n in g.node}))
variants = {"none": [], "depthwise": dw, "depthwise+first+last2": dw + pw[:1] + pw[-2:],
            "adds": [n.name for n in g.node if n.op_type == "Add"],
            "nonconv(all but Conv/Gemm/MatMul)": [n.name for n in g.node if n.op_type not in ("Conv", "Gemm", "MatMul")]}
for name, nodes in variants.items():
    out = work / "mixed.onnx"
    quantize_static(str(pre), str(out), array_reader("input", cpx), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=nodes, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"TensorQuantOverrides": xo._pixel_ranges_of(pre)})
    evaluate(f"{name} ({len(nodes)} float)", xo.keep_float(out.read_bytes(), tuple(nodes)) if nodes else out.read_bytes())
