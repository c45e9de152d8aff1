"""QAT-lite prototype. Usage: RUN PIXELS.npy EPOCHS 200 LR [kernels|bn] [EXTRA]. After int8_ready, tune BN gamma/beta + head
(and with ``kernels`` the folded kernels, through a straight-through int8 grid) with fake-quantized activations
(fixed minmax ranges, as the converter will pick), distilling the fp32 model's logits on augmented
calibration images. Then build TFLite/ONNX int8 as usual and measure on the gate's confirmation part."""
import sys, json, time, tempfile, numpy as np
from pathlib import Path
from mstl.tf_env import tf, keras
from mstl.edge.core.filelist import read_list
from mstl.edge.core.preprocess import Preprocess
from mstl.model import load_classifier
from mstl.export.gate import split
from mstl.export.bias_correction import int8_ready, _container
from mstl.edge.core.metrics import top1_agreement
from mstl.data.splits import stratified_sample
from mstl.edge.core.runtimes import load_runtime
from mstl.edge.core.formats import BuildOptions
from mstl.export import tflite as xt, onnx as xo
run = Path(sys.argv[1]); ex = run / "exports"; EPOCHS = int(sys.argv[3]); NCAL = int(sys.argv[4]) if len(sys.argv) > 4 else 200
KERNELS = len(sys.argv) > 6 and sys.argv[6] == "kernels"  # else BN scales/offsets and the head only
# Selection images added to the tuning set (an experiment on how far more images go: the selection
# figures then mean nothing, the confirmation ones stay clean); the converter still calibrates on the 200.
EXTRA = int(sys.argv[7]) if len(sys.argv) > 7 else 0
ref = np.load(ex / "gate-reference.npy"); px = np.load(sys.argv[2]); conf = ~split(len(px)); sel = ~conf
trs, trl = read_list(run / "target_train.tsv")
cpx = Preprocess(150, "bilinear").load_many([trs[i] for i in stratified_sample(np.asarray(trl), 200, 0)])
model_path = run / json.loads((run / "selection.json").read_text())["model"]
teacher = load_classifier(model_path); m = load_classifier(model_path); int8_ready(m, cpx)
net, feed = _container(m); head = m.get_layer("target_head"); scaling = m.get_layer("scaling")
tnet, tfeed = _container(teacher); thead = teacher.get_layer("target_head")
def logits_of(netm, feedf, hd, x, fq=None):
    f = netm(feedf(x), training=False) if fq is None else fq(feedf(x))
    f = tf.reduce_mean(f, axis=(1, 2)); f = f if fq is None else fqt(f, "pool")
    z = tf.matmul(f, hd.kernel) + hd.bias
    return z if fq is None else fqt(z, "logits")
# --- fake-quant student over the base's layers
ranges = {}
def is_q(layer):
    n = type(layer).__name__
    if n in ("ReLU", "Add"): return True
    if n == "BatchNormalization":
        return not any(type(l).__name__ == "ReLU" and l.input is layer.output for l in net.layers)
    return False
from mstl.export.bias_correction import conv_bn_pairs, _folded_scale
PAIRS = {c.name: b for c, b in conv_bn_pairs(net)} if KERNELS else {}; BNS = {b.name for b in PAIRS.values()}
def folded_conv(layer, bn, x):
    k = bn.gamma / tf.sqrt(bn.moving_variance + bn.epsilon)
    dw = type(layer).__name__ == "DepthwiseConv2D"
    kk = tf.reshape(k, (1, 1, -1, 1) if dw else (1, 1, 1, -1))
    w = layer.kernel * kk
    axes = (0, 1, 3) if dw else (0, 1, 2)
    s = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(w), axis=axes, keepdims=True), 1e-12) / 127.0)
    wq = w + tf.stop_gradient(tf.round(w / s) * s - w)
    st = [1, layer.strides[0], layer.strides[1], 1]; pad = layer.padding.upper()
    y = tf.nn.depthwise_conv2d(x, wq, st, pad) if dw else tf.nn.conv2d(x, wq, st, pad)
    return y + (bn.beta - bn.moving_mean * k)
def run_net(x, record=False, quant=True):
    vals = {id(net.inputs[0]): fqt(x, "input", record, quant)}
    for layer in net.layers[1:]:
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        args = [vals[id(t)] for t in ins]
        if layer.name in PAIRS: y = folded_conv(layer, PAIRS[layer.name], args[0])
        elif layer.name in BNS: y = args[0]
        elif type(layer).__name__ == "BatchNormalization": y = layer(args[0], training=False)
        else: y = layer(args if len(args) > 1 else args[0], training=False)
        if is_q(layer): y = fqt(y, layer.name, record, quant)
        vals[id(layer.output)] = y
    return vals[id(net.outputs[0])]
def fqt(x, name, record=False, quant=True):
    if record:
        lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x)); a, b = ranges.get(name, (lo, hi)); ranges[name] = (min(a, lo), max(b, hi)); return x
    if not quant or name not in ranges: return x
    lo, hi = ranges[name]; return tf.quantization.fake_quant_with_min_max_args(x, min=min(lo, 0.0), max=max(hi, 0.0), num_bits=8)
def student(x, record=False, quant=True):
    f = run_net(scaling(x), record, quant)
    f = tf.reduce_mean(f, axis=(1, 2)); f = fqt(f, "pool", record, quant)
    z = tf.matmul(f, head.kernel) + head.bias
    return fqt(z, "logits", record, quant)
for i in range(0, len(cpx), 25): student(tf.constant(cpx[i:i+25], tf.float32), record=True)
cal200 = cpx; cpx = np.concatenate([cpx, px[sel][:EXTRA]]); print('tuning images', len(cpx))
print("ranges", len(ranges))
def teach(x): return logits_of(tnet, tfeed, thead, x)
train_vars = [v for l in net.layers if type(l).__name__ == "BatchNormalization" for v in (l.gamma, l.beta)] + [head.kernel, head.bias] + [l.kernel for l in net.layers if l.name in PAIRS]
opt = keras.optimizers.Adam(float(sys.argv[5]) if len(sys.argv) > 5 else 1e-4)
rng = np.random.default_rng(0)
def augment(b):
    b = b.copy()
    flip = rng.random(len(b)) < 0.5; b[flip] = b[flip, :, ::-1]
    b = b * rng.uniform(0.85, 1.15, (len(b), 1, 1, 1)) + rng.uniform(-15, 15, (len(b), 1, 1, 1))
    return np.clip(b, 0, 255).astype(np.float32)
def sq_err(x):
    return float(tf.reduce_mean(tf.square(student(x) - teach(x))))
xc = tf.constant(cpx[:64], tf.float32); print("before: calibration logit mse", round(sq_err(xc), 4), flush=True)
t0 = time.time()
for ep in range(EPOCHS):
    order = rng.permutation(len(cpx)); tot = 0
    for i in range(0, len(order), 16):
        xb = tf.constant(augment(cpx[order[i:i+16]]))
        tz = teach(xb)
        with tf.GradientTape() as tape:
            d = student(xb) - tz; loss = tf.reduce_mean(tf.square(d[:, 1] - d[:, 0])) + 0.1 * tf.reduce_mean(tf.square(d))
        opt.apply_gradients(zip(tape.gradient(loss, train_vars), train_vars)); tot += float(loss)
    print(f"epoch {ep+1}: loss {tot/ (len(order)/16):.4f}  ({time.time()-t0:.0f} s)", flush=True)
print("after: calibration logit mse", round(sq_err(xc), 4), flush=True)
from mstl.export.bias_correction import round_kernel
for l in net.layers:
    if l.name in PAIRS: round_kernel(l, PAIRS[l.name])
if KERNELS:
    print("after re-rounding: calibration logit mse", round(sq_err(xc), 4), flush=True)
def ld(p): p = np.clip(p, 1e-6, 1); return np.log(p[:, 1]) - np.log(p[:, 0])
def evaluate(name, p):
    tc, ts = top1_agreement(p[conf], ref[conf]), top1_agreement(p[sel], ref[sel]); e = ld(p) - ld(ref); near = np.abs(ref[:, 1] - .5) < .25
    print(f"{name}: selection {ts['flips']} flips, confirmation {100*tc['agreement']:.2f}% ({tc['flips']} of {tc['n_compared']}); err near boundary {e[near].mean():+.3f} +- {e[near].std():.3f}", flush=True)
p = m.predict(px.astype(np.float32), batch_size=64, verbose=0); evaluate("tuned Keras float", p)
work = Path(tempfile.mkdtemp(prefix="qat-"))
opts = BuildOptions(cal200, "uint8")
data = xt.build_int8(m, work, opts); (work / "q.tflite").write_bytes(data)
evaluate("tuned TFLite int8", load_runtime(work / "q.tflite").predict(px))
data = xo.build_int8(m, work, BuildOptions(cal200, "uint8", activations="int8")); (work / "q.onnx").write_bytes(data)
evaluate("tuned ONNX s8s8", load_runtime(work / "q.onnx").predict(px))
