"""The one data structure MAML consumes: support and query sets of several tasks, task axis first."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class EpisodeBatch(NamedTuple):
    """``support_x [T, S, ...]``, ``support_y [T, S, ...]``, ``query_x [T, Q, ...]``, ``query_y [T, Q, ...]``."""

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor


def as_episode_batch(data) -> EpisodeBatch:
    """Accept ``(sx, sy, qx, qy)`` or Keras' ``((sx, sy, qx), qy)`` and check that the axes agree.

    Checks use static shapes, so they run once at trace time and cost nothing per step.
    """
    if isinstance(data, dict):
        data = tuple(data[k] for k in EpisodeBatch._fields)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (tuple, list)) and len(data[0]) == 3:
        data = (*data[0], data[1])
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise ValueError(
            "An episode batch is the 4-tuple (support_x, support_y, query_x, query_y), each with a leading "
            f"task axis; got {type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}."
        )
    batch = EpisodeBatch(*(tf.convert_to_tensor(t) for t in data))
    shapes = {name: t.shape for name, t in zip(EpisodeBatch._fields, batch)}
    described = ", ".join(f"{k}={v}" for k, v in shapes.items())
    for name, shape in shapes.items():
        if shape.rank is not None and shape.rank < 2:
            raise ValueError(
                f"{name} has shape {shape}, but every part of an episode batch needs a task axis and an "
                f"example axis [tasks, examples, ...]. Add the task axis (e.g. x[None]) for one task. Got {described}."
            )
    tasks = {s[0] for s in shapes.values() if s.rank is not None and s[0] is not None}
    if len(tasks) > 1:
        raise ValueError(f"The task axes of the episode batch disagree ({described}); all four need the same first dimension.")
    for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
        nx, ny = shapes[x], shapes[y]
        if nx.rank is not None and ny.rank is not None and nx[1] is not None and ny[1] is not None and nx[1] != ny[1]:
            raise ValueError(f"{x} has {nx[1]} examples per task but {y} has {ny[1]} ({described}); they must match.")
    sx, qx = shapes["support_x"], shapes["query_x"]
    if sx.rank is not None and qx.rank is not None and (sx.rank != qx.rank or sx[2:] != qx[2:]):
        raise ValueError(f"support_x and query_x must have the same rank and example shape ({described}).")
    sy, qy = shapes["support_y"], shapes["query_y"]
    if sy.rank is not None and qy.rank is not None and sy.rank != qy.rank:
        raise ValueError(f"support_y and query_y must have the same rank ({described}).")
    return batch
