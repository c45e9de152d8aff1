"""The one place TensorFlow is imported: quiet start-up unless the user asked for its logs."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "training and export need TensorFlow: pip install 'mstl[train]' "
        "(or 'tensorflow[and-cuda]' on a GPU machine)"
    ) from e

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]

import warnings  # noqa: E402

# Our datasets are shuffled by tf.data already; Keras warns about its own shuffle flag regardless.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
