"""The paper's adaptation protocol (Figure 5): return after 0, 1, 2, … policy-gradient steps on new tasks.

Step k samples ``n_traj`` episodes per task (or, with ``budget="steps"``, ``n_traj × horizon`` steps of them
as the paper's evaluation code did: :meth:`Sampler.sample`) with the current per-task policy, records their mean
return, then takes one vanilla policy-gradient step on them (the meta-training inner update). The
first step uses the meta-training fast learning rate; later steps may use another (``later_lr``): the
paper's 2D-navigation evaluation (cbfinn/maml_rl, ``test_maml_point.py``) halves it after the first.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_maml.rl.envs.base import Task
from tf_maml.rl.maml_trpo import inner_update, tile_params, to_pg_data
from tf_maml.rl.sampler import Sampler


class Adapter:
    """A compiled one-step inner update for stacked per-task parameters (first order: no outer tape)."""

    def __init__(self, model: keras.Model, fast_lr: float, vectorize: bool = True) -> None:
        self.model = model
        self.fast_lr = fast_lr
        self._step = tf.function(
            lambda params, data, lr: inner_update(model, params, data, lr, 1, True, vectorize),
            reduce_retracing=True,
        )

    def __call__(self, stacked_params: Sequence[tf.Tensor], data, lr: float | None = None) -> list[tf.Tensor]:
        return self._step(list(stacked_params), data, tf.constant(self.fast_lr if lr is None else lr, tf.float32))


def adaptation_returns(
    model: keras.Model,
    params: Sequence[tf.Tensor],
    sampler: Sampler,
    tasks: Sequence[Task],
    n_traj: int,
    fast_lr: float,
    steps: int = 3,
    seed: int = 0,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    return_params: bool = False,
    later_lr: float | None = None,
    budget: str = "episodes",
):
    """Per-task mean returns ``[steps + 1, T]`` after 0..steps adaptation steps (and the final params).

    Step 1 uses ``fast_lr``, steps 2.. use ``later_lr`` (default: ``fast_lr``). ``budget="steps"`` samples
    as the paper's evaluation code did (:meth:`Sampler.sample`): ``n_traj × horizon`` steps of whole
    episodes per task, episodes that end early weighing more in the mean.
    """
    adapter = Adapter(model, fast_lr)
    stacked = tile_params(params, len(tasks))
    returns = []
    for k in range(steps + 1):
        batch = sampler.sample(stacked, tasks, n_traj, seed=seed * 1000 + k, per_task_params=True, budget=budget)
        returns.append(batch.task_returns())
        if k < steps:
            lr = fast_lr if k == 0 or later_lr is None else later_lr
            stacked = adapter(stacked, to_pg_data(batch, gamma, gae_lambda), lr)
    returns = np.stack(returns)
    return (returns, stacked) if return_params else returns


def mean_ci95(per_task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over tasks (last axis) and the 95% normal-approximation half-width 1.96·s/√n."""
    n = per_task.shape[-1]
    std = per_task.std(axis=-1, ddof=1) if n > 1 else np.zeros(per_task.shape[:-1])
    return per_task.mean(axis=-1), 1.96 * std / np.sqrt(n)
