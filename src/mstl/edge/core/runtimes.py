"""On-device runtimes behind one small interface: LiteRT for .tflite, ONNX Runtime for .onnx, and
Keras for .keras (only where TensorFlow is installed). No TensorFlow import here: a board has none.

The Keras runtime (mstl.keras_runtime) is a plugin found by its entry point.

Every runtime takes raw RGB pixels (uint8, N x H x W x 3) - the exported graphs carry their own
scaling - quantizes them when the model's input is integer, and returns float probabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .formats import for_file


class RuntimeError_(RuntimeError):
    """An artifact that cannot be loaded or run, with the file and the reason."""


@dataclass
class Quant:
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray, dtype) -> np.ndarray:
        info = np.iinfo(dtype)
        return np.clip(np.rint(x / self.scale + self.zero_point), info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * self.scale


def litert_quant(detail: dict) -> Quant | None:
    """A LiteRT tensor's (scale, zero point), from its interpreter details; None when it has none."""
    scale, zp = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return Quant(float(scale), int(zp))


def to_input(x: np.ndarray, dtype, quant: Quant | None) -> np.ndarray:
    """Pixels as a model input of ``dtype``: an integer input takes them quantized (rounded and clipped
    to its range, even on the identity grid, so that 200 never wraps into an int8's -56); a float one
    as float32. The runtimes, the bias correction and the layer diagnosis all feed LiteRT this way."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return x.astype(np.float32)
    if x.dtype == dtype and (quant is None or (quant.scale == 1.0 and quant.zero_point == 0)):
        return x
    return (quant or Quant(1.0, 0)).quantize(x.astype(np.float32), dtype)


def to_float(t: np.ndarray, quant: Quant | None) -> np.ndarray:
    """A tensor as the real numbers it stands for: dequantized where it is quantized, else float32."""
    return quant.dequantize(t) if quant else t.astype(np.float32)


class Runtime:
    format: str = ""
    name: str = ""
    version: str = ""
    xnnpack: bool | None = None
    input_shape: tuple[int, ...] = ()
    input_dtype: np.dtype = np.dtype(np.float32)
    input_quant: Quant | None = None
    output_quant: Quant | None = None

    @property
    def image_size(self) -> int:
        return int(self.input_shape[1])

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """Raw uint8 pixels (H x W x 3 or N x H x W x 3) -> what the model's input takes, batch 1 each."""
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        return to_input(x, self.input_dtype, self.input_quant)

    def run(self, x: np.ndarray) -> np.ndarray:
        """One prepared batch-1 input -> raw output (the timed call)."""
        raise NotImplementedError

    def output_probs(self, raw: np.ndarray) -> np.ndarray:
        out = to_float(raw, self.output_quant)
        return out.reshape(out.shape[0], -1)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of raw images, fed one at a time as a device would."""
        x = self.prepare(pixels)
        return np.concatenate([self.output_probs(self.run(x[i:i + 1])) for i in range(len(x))])


class LiteRTRuntime(Runtime):
    format = "tflite"

    def __init__(self, path: str, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
            import ai_edge_litert
            self.name, self.version = "LiteRT", getattr(ai_edge_litert, "__version__", _pkg_version("ai-edge-litert"))
        except ImportError:  # old boards: the deprecated tflite-runtime has the same API
            from tflite_runtime.interpreter import Interpreter  # type: ignore
            self.name, self.version = "tflite-runtime", _pkg_version("tflite-runtime")
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise RuntimeError_(f"{path}: LiteRT cannot load it ({str(e).splitlines()[0]})") from None
        # Detected, not assumed: nodes taken by the default CPU delegate (XNNPACK) show as one DELEGATE op.
        try:
            self.xnnpack = any(op["op_name"] == "DELEGATE" for op in self.interp._get_ops_details())
        except AttributeError:  # an interpreter without the inspection call (old tflite-runtime)
            self.xnnpack = None
        inp = self.interp.get_input_details()[0]
        out = self.interp.get_output_details()[0]
        self._in, self._out = inp["index"], out["index"]
        self.input_shape = tuple(int(v) for v in inp["shape"])
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_quant = litert_quant(inp)
        self.output_quant = litert_quant(out) if np.issubdtype(np.dtype(out["dtype"]), np.integer) else None
        self._set, self._invoke, self._get = self.interp.set_tensor, self.interp.invoke, self.interp.get_tensor

    def run(self, x: np.ndarray) -> np.ndarray:
        self._set(self._in, x)
        self._invoke()
        return self._get(self._out)


class OnnxRuntime(Runtime):
    format = "onnx"

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort
        self.name, self.version = "ONNX Runtime", ort.__version__
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise RuntimeError_(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        inp = self.sess.get_inputs()[0]
        self._in = inp.name
        self._outs = [self.sess.get_outputs()[0].name]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.input_shape = tuple(shape)
        self.input_dtype = np.dtype({"tensor(float)": np.float32, "tensor(uint8)": np.uint8,
                                     "tensor(int8)": np.int8}.get(inp.type, np.float32))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(self._outs, {self._in: x})[0]


def load_runtime(path: str | os.PathLike, threads: int = 1) -> Runtime:
    p = Path(path)
    if not p.is_file():
        raise RuntimeError_(f"{p}: no such artifact file")
    fam = for_file(str(p))
    if fam == "tflite":
        return LiteRTRuntime(str(p), threads)
    if fam == "onnx":
        return OnnxRuntime(str(p), threads)
    # .keras runs through a runtime that needs TensorFlow: a plugin (entry point group "mstl.runtimes"), so
    # that nothing here imports it - a board has no TensorFlow, and loads it only for a .keras file
    try:
        return _plugin(fam)(str(p), threads)
    except ImportError:
        raise RuntimeError_(f"{p}: .keras artifacts need TensorFlow (pip install 'mstl[train]')") from None


def _plugin(family: str):
    from importlib.metadata import entry_points
    found = [e for e in entry_points(group="mstl.runtimes") if e.name == family]
    if not found:
        raise RuntimeError_(f"no runtime for .{family} files is installed (mstl's own package registers the "
                            "Keras one: reinstall mstl)")
    return found[0].load()


def _pkg_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "unknown"
