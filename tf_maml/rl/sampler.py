"""Batched trajectory sampling for many tasks at once on gymnasium vector envs.

Episodes are run in *waves* on one vector env; a wave holds whole tasks (or an equal share of one
task's episodes) so the policy is evaluated as one TensorFlow call ``[tasks_in_wave, episodes, obs]``
with per-task parameters (post-update sampling uses a different adapted policy for every task).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf

from tf_maml.rl.envs import make_env, make_policy_env
from tf_maml.rl.envs.base import Task
from tf_maml.rl.policy import distribution, sample_actions

CHEAP_ENVS = ("tf_maml/Navigation2D-v0",)


@dataclass
class TrajectoryBatch:
    """Padded episodes with a task axis: ``obs [T, N, H, obs_dim]``, ``actions [T, N, H, act_dim]``,
    ``rewards``/``mask [T, N, H]`` (mask = 1 on steps that happened)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    tasks: list[Task] = field(default_factory=list)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, ``[T, N]``."""
        return (self.rewards * self.mask).sum(axis=-1)

    def task_returns(self) -> np.ndarray:
        """Mean undiscounted return per task, ``[T]``."""
        return self.episode_returns().mean(axis=-1)

    def mean_return(self) -> float:
        return float(self.episode_returns().mean())

    @property
    def env_steps(self) -> int:
        return int(self.mask.sum())


def _wave_layout(n_tasks: int, n_traj: int, num_envs: int) -> tuple[int, int]:
    """``(tasks_per_wave, episodes_per_task_per_wave)`` so that waves tile the task × episode grid."""
    if num_envs >= n_traj:
        return max(1, min(n_tasks, num_envs // n_traj)), n_traj
    share = max(d for d in range(1, num_envs + 1) if n_traj % d == 0)
    return 1, share


class Sampler:
    """Samples ``n_traj`` episodes for each task with a (per-task) Gaussian policy.

    ``asynchronous=None`` picks ``SyncVectorEnv`` for cheap envs (Navigation2D) and
    ``AsyncVectorEnv`` (one worker process per env) for MuJoCo. Results depend only on ``seed``.
    The policy acts in [−1, 1] per axis (:func:`tf_maml.rl.envs.make_policy_env`); stored actions are
    the policy's own samples, so log-probabilities are of what the policy drew.
    """

    def __init__(
        self,
        env_id: str,
        model: keras.Model,
        num_envs: int,
        asynchronous: bool | None = None,
        progress: bool = False,
    ) -> None:
        self.env_id = env_id
        self.model = model
        self.num_envs = num_envs
        self.asynchronous = env_id not in CHEAP_ENVS if asynchronous is None else asynchronous
        self.progress = progress
        self._envs: gym.vector.VectorEnv | None = None
        probe = make_env(env_id)
        self.horizon = int(probe.spec.max_episode_steps)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        self.action_low = np.asarray(probe.action_space.low, np.float32)  # the env's own units
        self.action_high = np.asarray(probe.action_space.high, np.float32)
        self.task_sampler = probe.unwrapped
        self._act = tf.function(self._act_impl, reduce_retracing=True)

    def sample_tasks(self, n: int, seed: int) -> list[Task]:
        return self.task_sampler.sample_tasks(n, seed)

    def _vector_env(self, size: int) -> gym.vector.VectorEnv:
        if self._envs is None or self._envs.num_envs != size:
            self.close()
            fns = [functools.partial(make_policy_env, self.env_id) for _ in range(size)]
            cls = gym.vector.AsyncVectorEnv if self.asynchronous else gym.vector.SyncVectorEnv
            self._envs = cls(fns)
        return self._envs

    def close(self) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None

    def _act_impl(self, params: list[tf.Tensor], obs: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Actions for ``obs [k, m, d]`` under per-task ``params`` (leading axis k)."""
        mean, log_std = tf.vectorized_map(lambda a: distribution(self.model, a[0], a[1]), (params, obs))
        return sample_actions(mean, log_std, seed)

    def sample(
        self,
        params: Sequence[tf.Tensor],
        tasks: Sequence[Task],
        n_traj: int,
        seed: int,
        per_task_params: bool = False,
    ) -> TrajectoryBatch:
        """Sample; ``params`` is one parameter list, or with ``per_task_params`` stacked ``[T, ...]``."""
        n_tasks, horizon = len(tasks), self.horizon
        if not per_task_params:
            params = [tf.convert_to_tensor(p)[None] for p in params]
        tasks_per_wave, share = _wave_layout(n_tasks, n_traj, self.num_envs)
        wave_size = tasks_per_wave * share
        envs = self._vector_env(wave_size)
        obs_out = np.zeros((n_tasks, n_traj, horizon, self.obs_dim), np.float32)
        act_out = np.zeros((n_tasks, n_traj, horizon, self.act_dim), np.float32)
        rew_out = np.zeros((n_tasks, n_traj, horizon), np.float32)
        mask_out = np.zeros((n_tasks, n_traj, horizon), np.float32)
        waves = [
            (t0, j0)
            for t0 in range(0, n_tasks, tasks_per_wave)
            for j0 in range(0, n_traj, share)
        ]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(waves) * horizon, desc="sampling", leave=False)
        for w, (t0, j0) in enumerate(waves):
            task_ids = [min(t0 + i, n_tasks - 1) for i in range(tasks_per_wave)]  # last wave: pad
            wave_params = [tf.gather(p, task_ids) if per_task_params else p for p in params]
            if not per_task_params:
                wave_params = [tf.repeat(p, tasks_per_wave, axis=0) for p in wave_params]
            envs.set_attr("task", [tasks[i] for i in task_ids for _ in range(share)])
            env_seeds = [int(seed) * 1_000_003 + (w * wave_size + e) for e in range(wave_size)]
            obs, _ = envs.reset(seed=env_seeds)
            alive = np.ones(wave_size, dtype=bool)
            ob = np.zeros((wave_size, horizon, self.obs_dim), np.float32)
            ac = np.zeros((wave_size, horizon, self.act_dim), np.float32)
            rw = np.zeros((wave_size, horizon), np.float32)
            mk = np.zeros((wave_size, horizon), np.float32)
            for t in range(horizon):
                obs = np.asarray(obs, np.float32).reshape(wave_size, self.obs_dim)
                step_seed = tf.constant([int(seed) % (2**31), w * horizon + t], tf.int32)
                actions = self._act(wave_params, obs.reshape(tasks_per_wave, share, self.obs_dim), step_seed)
                actions = actions.numpy().reshape(wave_size, self.act_dim)
                ob[:, t], ac[:, t], mk[:, t] = obs, actions, alive
                obs, rewards, terminated, truncated, _ = envs.step(actions)
                rw[:, t] = np.where(alive, rewards, 0.0)
                alive &= ~(np.asarray(terminated) | np.asarray(truncated))
                if bar is not None:
                    bar.update(1)
                if not alive.any():
                    break
            for i in range(tasks_per_wave):
                if t0 + i >= n_tasks:
                    break
                sl = slice(i * share, (i + 1) * share)
                obs_out[t0 + i, j0 : j0 + share] = ob[sl]
                act_out[t0 + i, j0 : j0 + share] = ac[sl]
                rew_out[t0 + i, j0 : j0 + share] = rw[sl]
                mask_out[t0 + i, j0 : j0 + share] = mk[sl]
        if bar is not None:
            bar.close()
        return TrajectoryBatch(obs_out, act_out, rew_out, mask_out, list(tasks))
