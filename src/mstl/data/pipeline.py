"""tf.data input pipeline over the decoded-image cache: batched gathers from the memory-mapped
uint8 array (files were decoded once, in parallel, when the cache was built), prefetched."""

from __future__ import annotations

import numpy as np

from ..tf_env import tf


def _gather(images: np.ndarray, raw: bool = False):
    """``gather(indices)``: those rows as float32 (or in the cache's own dtype with ``raw``)."""
    dtype = images.dtype if raw else np.float32

    def gather(idx: np.ndarray) -> np.ndarray:
        # Sorted reads are sequential on disk; put the batch back in its shuffled order afterwards.
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx),) + images.shape[1:], dtype=dtype)
        out[order] = images[idx[order]]
        return out
    return gather


def make_dataset(images: np.ndarray, indices, labels, batch_size: int, shuffle: bool = False,
                 seed: int = 0) -> "tf.data.Dataset":
    """Batches of (raw pixels 0..255 as float32, int labels); labels align with ``indices``."""
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(indices) != len(labels):
        raise ValueError(f"{len(indices)} indices but {len(labels)} labels")
    shape = (None,) + tuple(images.shape[1:])
    gather_raw = _gather(images, raw=images.dtype == np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((indices, labels))
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def load(i, y):
        # uint8 across the numpy boundary (a quarter of the bytes under the GIL), float32 in TensorFlow
        x = tf.cast(tf.numpy_function(gather_raw, [i], images.dtype if images.dtype == np.uint8 else tf.float32), tf.float32)
        x.set_shape(shape)
        return x, y

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def gather_array(images: np.ndarray, indices) -> np.ndarray:
    """The images at ``indices`` as one float32 array (for small sets and inference)."""
    return _gather(images)(np.asarray(indices, dtype=np.int64))
