"""Where does the real model's int8 error come from? fp32 Keras vs int8-ready Keras vs TFLite/ONNX int8."""
import sys, json, numpy as np
from pathlib import Path
from mstl.edge.core.filelist import read_list
from mstl.edge.core.preprocess import Preprocess
from mstl.edge.core.runtimes import load_runtime
from mstl.model import load_classifier
from mstl.export.gate import split
from mstl.export.bias_correction import int8_ready
from mstl.edge.core.metrics import top1_agreement
run = Path(sys.argv[1]); ex = run / "exports"
gate_src, _ = read_list(ex / "gate.tsv"); ref = np.load(ex / "gate-reference.npy")
px = np.load(sys.argv[2]) if len(sys.argv) > 2 else Preprocess(150, "bilinear").load_many(gate_src)
tr, _ = read_list(run / "target_train.tsv"); g = set(gate_src); cal = [s for s in tr if s not in g]
print("gate", len(px), "calibration pool", len(cal))
sel = json.loads((run / "selection.json").read_text())
conf = ~split(len(px))
def ld(p): p = np.clip(p, 1e-6, 1); return np.log(p[:, 1]) - np.log(p[:, 0])
def rep(name, p):
    t = top1_agreement(p[conf], ref[conf]); e = ld(p) - ld(ref); near = np.abs(ref[:, 1] - .5) < .25
    print(f"{name}: confirmation {100*t['agreement']:.2f}% ({t['flips']} of {t['n_compared']}); logit-diff err near boundary mean {e[near].mean():+.3f} std {e[near].std():.3f}", flush=True)
    return e
outs = {}
for art in ("classifier-int8.tflite", "classifier-int8.onnx"):
    outs[art] = rep(art, load_runtime(ex / art).predict(px))
cpx = Preprocess(150, "bilinear").load_many(cal[:200]) if False else None
from mstl.data.splits import stratified_sample
trs, trl = read_list(run / "target_train.tsv")
pick = stratified_sample(np.asarray(trl), 200, 0)
cpx = Preprocess(150, "bilinear").load_many([trs[i] for i in pick])
m = load_classifier(run / sel["model"])
int8_ready(m, cpx)
p = m.predict(px.astype(np.float32), batch_size=64, verbose=0)
pass
e_ready = rep("int8-ready Keras (float)", p)
for art, e in outs.items():
    print(art, "corr(err, ready err) near boundary", np.corrcoef(e, e_ready)[0, 1].round(3))
print("corr tflite/onnx", np.corrcoef(*outs.values())[0, 1].round(3))
