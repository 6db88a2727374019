"""The sinusoid task distribution of Finn et al. (2017), as a seedable, resumable tf.data pipeline."""

from __future__ import annotations

import math

import tensorflow as tf

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def sample_sinusoid_tasks(seed, tasks: int, shots: int, queries: int, dtype=tf.float32):
    """One episode batch of ``tasks`` sinusoids with ``shots`` support and ``queries`` query points.

    ``seed`` is a stateless seed (shape [2]), so the same seed always gives the same batch.
    Returns ``(support_x, support_y, query_x, query_y)`` of shapes ``[tasks, shots|queries, 1]`` and the
    ``(amplitude, phase)`` of each task.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    amp = tf.random.stateless_uniform([tasks, 1, 1], seeds[0], *AMPLITUDE, dtype=dtype)
    phase = tf.random.stateless_uniform([tasks, 1, 1], seeds[1], *PHASE, dtype=dtype)
    x = tf.random.stateless_uniform([tasks, shots + queries, 1], seeds[2], *INPUT_RANGE, dtype=dtype)
    y = amp * tf.sin(x - phase)
    return (x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]), (amp[:, 0, 0], phase[:, 0, 0])


def sinusoid_episodes(
    meta_batch: int = 25, shots: int = 10, queries: int | None = None, seed: int = 0, start_step: int = 0,
    steps: int | None = None,
) -> tf.data.Dataset:
    """A dataset of episode batches; element i depends only on ``(seed, start_step + i)``, so a run that
    resumes at step s with ``start_step=s`` sees exactly the batches it would have seen."""
    queries = shots if queries is None else queries
    stop = None if steps is None else start_step + steps
    indices = tf.data.Dataset.range(start_step, stop if stop is not None else 2**62)
    return indices.map(
        lambda i: sample_sinusoid_tasks(tf.stack([tf.constant(seed, tf.int64), i]), meta_batch, shots, queries)[0],
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(tf.data.AUTOTUNE)
