"""Keras callbacks for meta-learning runs."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf


def episode_grid(support_x: np.ndarray, support_y: np.ndarray, query_x: np.ndarray, query_y: np.ndarray) -> np.ndarray:
    """One task as an image: a row per class, its support images then (after a gap) its query images."""
    classes = np.unique(support_y)
    rows = []
    for c in classes:
        s = support_x[support_y == c]
        q = query_x[query_y == c]
        gap = np.full_like(s[:1], 0.5)
        rows.append(np.concatenate([*s, *gap, *q], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


class EpisodeImages(keras.callbacks.Callback):
    """Writes an image grid of the first task of an episode batch to TensorBoard when training starts,
    so a run's logs show what the learner was actually fed.

    The step is the epoch training starts at, the x-axis of the epoch scalars Keras' ``TensorBoard`` writes.
    """

    def __init__(self, logdir: str, episode_batch, name: str = "episode") -> None:
        super().__init__()
        self.logdir = os.path.join(logdir, "train")
        self.batch = [np.asarray(t[0]) for t in episode_batch]
        self.name = name

    def on_train_begin(self, logs=None):
        grid = episode_grid(*self.batch)
        with tf.summary.create_file_writer(self.logdir).as_default():
            epoch = self.model.meta_steps_done() // (self.params.get("steps") or 1)
            tf.summary.image(self.name, grid[None].astype(np.float32), step=epoch)
