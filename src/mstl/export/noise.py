"""Where an int8 build's activation noise comes from, measured on the Keras model before any converter runs.

Both converters quantize the same activation tensors per tensor on a 256-level grid set by their
calibration min/max: the input after its scaling, each ReLU6 output, each projection's linear output,
each residual sum, the pooled features and the logits. To first order each tensor adds independent
rounding noise (variance s^2 / 12 per element, s its grid step) that reaches the answer through the
gradient of the logit difference, so a tensor's share of the answer's error variance is
s^2 / 12 * E[|d(z1 - z0) / dt|^2]. Measured on the images nearest the decision boundary (the only ones
noise can flip), the shares rank what to keep off the int8 grid - and, unlike a layer's own SQNR, they
say what keeping a *layer* in float cannot do: a float layer between int8 ones still reads and writes
int8 tensors. A tensor leaves the grid only when the op that makes it and every op that reads it run
in float - a region (export/mixed.py builds them per format).

On the shared chest X-rays (corrected preset) the first-order sum predicted an error std of 0.206 near the
boundary where the simulated build (``FakeQuant``) measured 0.216."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bias_correction import _container, _graph
from ..tf_env import keras, tf

NEAR_IMAGES = 300  # selection images nearest the boundary that the shares are measured on
POOL = "pool"  # the pooled features' tensor ('input': the scaled pixels, 'logits': the head's output)


@dataclass(frozen=True)
class Noise:
    tensor: str  # the Keras layer whose output is quantized ('input': the scaled pixels)
    share: float  # of the first-order error variance
    units: tuple[str, ...]  # layers that must run in float for it to leave the int8 grid


class FakeQuant:
    """The int8 build simulated layer by layer: every tensor a converter quantizes is fake-quantized at
    the min/max range it has on the calibration images (the converters' own choice for activations).
    The model is this project's classifier: pixels -> a Rescaling -> convolutions (flat, or nested in a
    base network) -> global average pooling -> a dense head."""

    def __init__(self, model: "keras.Model", calibration: np.ndarray, batch: int = 25):
        self.net, self.feed = _container(model)
        self.nested = self.net is not model
        self.head = next(l for l in model.layers if isinstance(l, keras.layers.Dense))
        self.scaling = next(l.name for l in model.layers if isinstance(l, keras.layers.Rescaling))
        self.pool = next(l.name for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D))
        self.ranges: dict[str, tuple[float, float]] = {}
        layers = self.net.layers
        relu_inputs = {id(l.input) for l in layers if isinstance(l, keras.layers.ReLU)}
        self.quantized = {l.name for l in layers if isinstance(l, (keras.layers.ReLU, keras.layers.Add))
                          or (isinstance(l, keras.layers.BatchNormalization) and id(l.output) not in relu_inputs)}
        for i in range(0, len(calibration), batch):
            self(np.asarray(calibration[i:i + batch], np.float32), record=True)

    def scale(self, name: str) -> float:
        lo, hi = self.ranges[name]
        return (max(hi, 0.0) - min(lo, 0.0)) / 255.0

    def __call__(self, x, record=False, quantize=True, tape=None, watch=None, skip=frozenset()):
        """Logits for raw pixels ``x``; ``skip``: tensors left in float (the probes' what-ifs)."""
        def q(v, name):
            if record:
                lo, hi = float(tf.reduce_min(v)), float(tf.reduce_max(v))
                a, b = self.ranges.get(name, (lo, hi))
                self.ranges[name] = (min(a, lo), max(b, hi))
            elif quantize and name not in skip:
                lo, hi = self.ranges[name]
                v = tf.quantization.fake_quant_with_min_max_args(v, min=min(lo, 0.0), max=max(hi, 0.0), num_bits=8)
            if tape is not None:
                tape.watch(v)
                watch.append((name, v))
            return v
        x = tf.constant(x)
        if not self.nested:
            return self._run(x, q)
        f = q(tf.reduce_mean(self._run(q(self.feed(x), "input"), q), axis=(1, 2)), POOL)
        return q(self._logits(f), "logits")

    def _logits(self, f):
        return tf.matmul(f, self.head.kernel) + self.head.bias  # before the softmax, as the converters see it

    def _run(self, x, q):
        net = self.net
        vals = {id(net.inputs[0]): x}
        for layer in net.layers[1:]:
            ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            args = [vals[id(t)] for t in ins]
            if layer is self.head:
                return q(self._logits(args[0]), "logits")
            y = layer(args if len(args) > 1 else args[0], training=False)
            if isinstance(layer, keras.layers.Rescaling):
                y = q(y, "input")
            elif isinstance(layer, keras.layers.GlobalAveragePooling2D):
                y = q(y, POOL)
            elif layer.name in self.quantized:
                y = q(y, layer.name)
            vals[id(layer.output)] = y
        return vals[id(net.outputs[0])]


def shares(fq: FakeQuant, pixels: np.ndarray, batch: int = 16) -> dict[str, float]:
    """Each quantized tensor's share of the logit difference's first-order error variance on ``pixels``."""
    g2: dict[str, float] = {}
    for i in range(0, len(pixels), batch):
        watch: list = []
        with tf.GradientTape() as tape:
            z = fq(np.asarray(pixels[i:i + batch], np.float32), quantize=False, tape=tape, watch=watch)
            d = tf.reduce_sum(z[:, 1] - z[:, 0])
        for (name, _), g in zip(watch, tape.gradient(d, [v for _, v in watch])):
            g2[name] = g2.get(name, 0.0) + (float(tf.reduce_sum(tf.square(g))) if g is not None else 0.0)
    var = {n: fq.scale(n) ** 2 / 12 * g / len(pixels) for n, g in g2.items()}
    total = sum(var.values()) or 1.0
    return {n: v / total for n, v in var.items()}


def units(fq: FakeQuant) -> dict[str, tuple[str, ...]]:
    """Quantized tensor -> the layers with an op of their own in a converted graph (convolutions, dense,
    additions, the scaling, the pooling) that make or read it. Zero padding, BatchNorm and ReLU6 fold
    into the convolution next to them."""
    net = fq.net
    producer, readers = _graph(net)
    own_op = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense, keras.layers.Add,
              keras.layers.Rescaling, keras.layers.GlobalAveragePooling2D)

    def maker(tensor) -> list[str]:
        layer = producer.get(id(tensor))
        while layer is not None and not isinstance(layer, own_op):
            if isinstance(layer, keras.layers.InputLayer):
                return [fq.scaling]
            layer = producer.get(id(layer.input))
        return [layer.name] if layer is not None else []

    def reading(tensor) -> list[str]:
        found = []
        for r in readers.get(id(tensor), []):
            found += reading(r.output) if isinstance(r, keras.layers.ZeroPadding2D) else [r.name]
        return found or ([fq.pool] if tensor is net.outputs[0] else [])

    scaled = next((l.output for l in net.layers if isinstance(l, keras.layers.Rescaling)), net.inputs[0])
    out = {"input": tuple([fq.scaling] + reading(scaled)), POOL: (fq.pool, fq.head.name), "logits": (fq.head.name,)}
    for layer in net.layers:
        if layer.name in fq.quantized:
            out[layer.name] = tuple(dict.fromkeys(maker(layer.output) + reading(layer.output)))
    return out


def measure(model: "keras.Model", calibration: np.ndarray, pixels: np.ndarray, reference: np.ndarray) -> list[Noise]:
    """The tensors of ``model`` by their share of the int8 error, largest first, measured on the
    ``NEAR_IMAGES`` of ``pixels`` whose ``reference`` answers lie nearest the boundary."""
    p = np.clip(np.asarray(reference, np.float64), 1e-7, 1)
    margin = np.abs(np.log(p[:, -1]) - np.log(p[:, 0]))
    near = np.argsort(margin, kind="stable")[:NEAR_IMAGES]
    fq = FakeQuant(model, calibration)
    share, made = shares(fq, pixels[near]), units(fq)
    return sorted((Noise(t, s, made[t]) for t, s in share.items()), key=lambda n: -n.share)
