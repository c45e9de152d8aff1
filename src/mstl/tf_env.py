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


def pin_threads(n: int) -> int:
    """TensorFlow's intra- and inter-op thread pools at ``n`` threads each; returns the intra-op count
    this process actually runs with. TensorFlow fixes both when it first runs an op, so this must come
    before any tensor is made (the CLI calls it first thing, a Ray task before it touches its data).
    Already started with another count: that count stays and is returned - the caller says so, and
    each trial records what it really ran with."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        pass  # started already: TensorFlow keeps the counts it started with
    return tf.config.threading.get_intra_op_parallelism_threads()


def enable_determinism() -> None:
    """Deterministic op implementations (GPU kernels that would otherwise sum in a race order,
    tf.data's ordering), or an error from any op that has none, instead of a silently varying trial."""
    tf.config.experimental.enable_op_determinism()
