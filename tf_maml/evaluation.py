"""Meta-test evaluation: a per-task score after each number of adaptation steps, with 95% intervals."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from tf_maml.episode_batch import as_episode_batch


def mean_confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the normal 95% confidence interval (1.96 standard errors), as papers report."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(values.size))


def task_mse(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean squared error per task, ``pred`` and ``y`` of shape [tasks, queries, ...]."""
    return ((pred - y) ** 2).reshape(pred.shape[0], -1).mean(axis=1)


def task_accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Classification accuracy per task, ``logits`` [tasks, queries, classes], ``y`` [tasks, queries]."""
    return (logits.argmax(-1) == y.reshape(logits.shape[:2])).mean(axis=1)


def ensemble_members(maml) -> list:
    """The meta-learners behind ``maml``: itself, or the members of a list or tuple of them (an ensemble)."""
    members = list(maml) if isinstance(maml, (list, tuple)) else [maml]
    if not members:
        raise ValueError("An empty ensemble: pass one meta-learner, or a list of at least one.")
    for member in members:
        if not hasattr(member, "predict_after_adaptation"):
            raise TypeError(f"Expected a meta-learner (tf_maml.MAML) or a list or tuple of them, got "
                            f"{type(member).__name__}.")
    return members


def scores_after_adaptation(
    maml,
    episodes: Iterable,
    steps: Sequence[int],
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tasks: int,
) -> dict[int, np.ndarray]:
    """Per-task scores of ``maml`` after each step count, over at least ``tasks`` tasks from ``episodes``.

    ``maml`` may be a list of meta-learners, an ensemble: each adapts to every task on its own and their query
    predictions (logits, for a classifier) are averaged before scoring, as MAML++ reports its figures (the
    logits of the five checkpoints of a run best on validation, averaged)."""
    members = ensemble_members(maml)
    steps = sorted(set(int(s) for s in steps))  # a repeated count would count each task twice
    collected: dict[int, list[np.ndarray]] = {s: [] for s in steps}
    seen = 0
    for batch in episodes:
        sx, sy, qx, qy = as_episode_batch(batch)
        preds = np.mean([m.predict_after_adaptation(sx, sy, qx, steps=steps) for m in members], axis=0)
        for i, s in enumerate(steps):
            collected[s].append(score(preds[i], tf.convert_to_tensor(qy).numpy()))
        seen += int(sx.shape[0])
        if seen >= tasks:
            break
    if seen < tasks:
        raise ValueError(f"The episode dataset ended after {seen} tasks; {tasks} were asked for.")
    return {s: np.concatenate(v)[:tasks] for s, v in collected.items()}


def summarize(scores: dict[int, np.ndarray]) -> dict[int, tuple[float, float]]:
    return {s: mean_confidence_interval(v) for s, v in scores.items()}
