"""Reading a run's TensorBoard event files back, for plots and for checking what a run logged."""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf


def read_events(logdir: str) -> dict[str, dict[int, np.ndarray]]:
    """``{tag: {step: tensor}}`` over every event file in ``logdir`` (not its subdirectories).

    Scalars come back as 0-d arrays; images as TensorBoard stores them (``[width, height, png bytes...]``),
    which :func:`decode_image` turns into pixels. A step logged twice (a resumed run) keeps the later value.
    """
    out: dict[str, dict[int, np.ndarray]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    out.setdefault(value.tag, {})[int(event.step)] = tf.make_ndarray(value.tensor)
    return out


def read_scalars(logdir: str) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalar summaries in ``logdir``."""
    return {tag: {step: float(v) for step, v in by_step.items()}
            for tag, by_step in read_events(logdir).items() if all(v.ndim == 0 for v in by_step.values())}


def decode_image(stored: np.ndarray) -> np.ndarray:
    """The ``[height, width, channels]`` uint8 pixels of an image summary read by :func:`read_events`."""
    return tf.io.decode_png(stored[2]).numpy()
