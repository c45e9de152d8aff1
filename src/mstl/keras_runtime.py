"""The Keras runtime: a .keras classifier behind the same interface as LiteRT and ONNX Runtime, for
measuring it beside its exports where TensorFlow is installed. Registered as the entry point
``mstl.runtimes: keras`` (pyproject.toml), so that mstl.edge.core.runtimes never imports TensorFlow."""

from __future__ import annotations

import numpy as np

from .edge.core.runtimes import Runtime


class KerasRuntime(Runtime):
    format = "keras"

    def __init__(self, path: str, threads: int = 1):
        from .tf_env import keras, tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised in this process
        self.name, self.version = "Keras", keras.__version__
        from .model import load_classifier
        self.model = load_classifier(path)
        self.input_shape = (1,) + tuple(int(d) for d in self.model.input_shape[1:])
        self._fn = tf.function(lambda x: self.model(x, training=False))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._fn(x).numpy()
