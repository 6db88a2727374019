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
BUDGETS = ("episodes", "steps")
Episode = tuple[np.ndarray, np.ndarray, np.ndarray]  # observations, actions, rewards of the steps it had


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
        """Undiscounted return of every episode, ``[T, N]`` (0 for padding, see :meth:`episodes`)."""
        return (self.rewards * self.mask).sum(axis=-1)

    def episodes(self) -> np.ndarray:
        """Which of the ``[T, N]`` slots hold an episode: with ``budget="steps"`` tasks differ in count."""
        return self.mask[..., 0] > 0

    def task_returns(self) -> np.ndarray:
        """Mean undiscounted return per task over its episodes, ``[T]``."""
        real = self.episodes()
        return (self.episode_returns() * real).sum(axis=-1) / np.maximum(real.sum(axis=-1), 1)

    def mean_return(self) -> float:
        """Mean over all episodes (rllab's AverageReturn)."""
        return float(self.episode_returns()[self.episodes()].mean())

    @property
    def env_steps(self) -> int:
        return int(self.mask.sum())


def wave_layout(n_tasks: int, n_traj: int, num_envs: int) -> tuple[int, int]:
    """``(tasks_per_wave, episodes_per_task_per_wave)`` so that waves tile the task × episode grid."""
    if num_envs >= n_traj:
        return max(1, min(n_tasks, num_envs // n_traj)), n_traj
    share = max(d for d in range(1, num_envs + 1) if n_traj % d == 0)
    return 1, share


class Sampler:
    """Samples ``n_traj`` episodes, or ``n_traj × horizon`` steps of episodes, for each task with a (per-task)
    Gaussian policy.

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
            # a finished env resets within the same step, so "steps" sampling runs episodes back to back
            self._envs = cls(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        return self._envs

    def close(self) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None

    def _act_impl(self, params: list[tf.Tensor], obs: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """Actions for ``obs [k, m, d]`` under per-task ``params`` (leading axis k), with noise ``[k, m, a]``."""
        mean, log_std = tf.vectorized_map(lambda a: distribution(self.model, a[0], a[1]), (params, obs))
        return sample_actions(mean, log_std, noise)

    def sample(
        self,
        params: Sequence[tf.Tensor],
        tasks: Sequence[Task],
        n_traj: int,
        seed: int,
        per_task_params: bool = False,
        budget: str = "episodes",
    ) -> TrajectoryBatch:
        """Sample; ``params`` is one parameter list, or with ``per_task_params`` stacked ``[T, ...]``.

        ``budget="episodes"``: exactly ``n_traj`` whole episodes per task. ``budget="steps"``: a step budget as
        rllab's vectorized sampler kept one: ``n_traj`` envs per task run episodes back to back, finished
        episodes are kept until they hold ``n_traj × horizon`` steps, the unfinished ones are dropped (per wave,
        where a task's envs span several). Tasks whose episodes end early (at a goal, or by falling) then get
        more, shorter episodes, and averages over episodes weigh those more. That is the paper's evaluation
        code exactly (one task, 40 envs, 4,000 steps); its training ran one env per task on a budget shared by
        the meta-batch, which drops one unfinished episode per task, not ``n_traj``, so favours short ones less.
        Episodes are padded with empty ones (``mask`` 0) to the largest count; the update packs them into
        full rows (:func:`tf_maml.rl.maml_trpo.pack_rows`), so the padding costs no compute there.
        """
        if budget not in BUDGETS:
            raise ValueError(f"budget={budget!r}: pass one of {BUDGETS}.")
        n_tasks, horizon = len(tasks), self.horizon
        # Everything random is keyed by the episode slot (task i, trajectory j): slot i·n_traj + j seeds its env
        # and reads its row of the action noise at each step, so --num-envs changes speed, not episodes (up to
        # the policy's float32 round-off between batch shapes, which MuJoCo's contacts grow).
        max_steps = horizon if budget == "episodes" else 2 * horizon
        noise = tf.random.stateless_normal([n_tasks * n_traj, max_steps, self.act_dim],
                                           seed=[int(seed) % (2**31), 0]).numpy()
        if not per_task_params:
            params = [tf.convert_to_tensor(p)[None] for p in params]
        tasks_per_wave, share = wave_layout(n_tasks, n_traj, self.num_envs)
        wave_size = tasks_per_wave * share
        envs = self._vector_env(wave_size)
        episodes: list[list[Episode]] = [[] for _ in range(n_tasks)]
        waves = [
            (t0, j0)
            for t0 in range(0, n_tasks, tasks_per_wave)
            for j0 in range(0, n_traj, share)
        ]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(waves) * horizon, desc="sampling", leave=False)
        for t0, j0 in waves:
            task_ids = [min(t0 + i, n_tasks - 1) for i in range(tasks_per_wave)]  # last wave: pad
            wave_params = [tf.gather(p, task_ids) if per_task_params else p for p in params]
            if not per_task_params:
                wave_params = [tf.repeat(p, tasks_per_wave, axis=0) for p in wave_params]
            envs.set_attr("task", [tasks[i] for i in task_ids for _ in range(share)])
            slots = [t0 * n_traj + j0 + i * n_traj + e for i in range(tasks_per_wave) for e in range(share)]
            env_seeds = [int(seed) * 1_000_003 + s for s in slots]
            wave_noise = noise[np.minimum(slots, len(noise) - 1)]  # the last wave's padding envs reuse a row
            kept = self._run_wave(envs, wave_params, env_seeds, wave_noise, share, budget, bar)
            for i in range(tasks_per_wave):
                if t0 + i < n_tasks:
                    episodes[t0 + i].extend(kept[i])
        if bar is not None:
            bar.close()
        return _padded(episodes, horizon, self.obs_dim, self.act_dim, tasks)

    def _run_wave(self, envs, wave_params, env_seeds: list[int], noise: np.ndarray, share: int, budget: str,
                  bar) -> list[list[Episode]]:
        """The finished episodes of each group of ``share`` envs (one task's), in env order.

        Each env records one episode in "episodes" mode; in "steps" mode it starts another while its group
        holds fewer than ``share × horizon`` finished steps, so every group is done within 2 × horizon steps.
        """
        horizon, size = self.horizon, len(env_seeds)
        groups = size // share
        max_steps = noise.shape[1]
        group = np.repeat(np.arange(groups), share)
        kept: list[list[tuple[int, Episode]]] = [[] for _ in range(groups)]
        kept_steps = np.zeros(groups, dtype=np.int64)
        recording = np.ones(size, dtype=bool)
        length = np.zeros(size, dtype=np.int64)
        ob = np.zeros((size, horizon, self.obs_dim), np.float32)
        ac = np.zeros((size, horizon, self.act_dim), np.float32)
        rw = np.zeros((size, horizon), np.float32)
        rows = np.arange(size)
        obs, _ = envs.reset(seed=env_seeds)
        # One concrete function per wave: each step's call then skips tf.function's input-type lookup, which
        # cost as much as the policy's own graph on a Navigation2D step (1.3-1.4x faster sampling with 4 envs).
        act = self._act.get_concrete_function(wave_params, tf.TensorSpec([groups, share, self.obs_dim], tf.float32),
                                              tf.TensorSpec([groups, share, self.act_dim], tf.float32))
        for t in range(max_steps):
            obs = np.asarray(obs, np.float32).reshape(size, self.obs_dim)
            actions = act(wave_params, tf.constant(obs.reshape(groups, share, self.obs_dim)),
                          tf.constant(noise[:, t].reshape(groups, share, self.act_dim)))
            actions = actions.numpy().reshape(size, self.act_dim)
            pos = np.minimum(length, horizon - 1)
            ob[rows, pos], ac[rows, pos] = obs, actions
            obs, rewards, terminated, truncated, _ = envs.step(actions)  # finished envs reset at once
            rw[rows, pos] = rewards
            length += 1
            for e in np.flatnonzero(np.asarray(terminated) | np.asarray(truncated)):
                g = group[e]
                if recording[e]:
                    n = length[e]
                    kept[g].append((e, (ob[e, :n].copy(), ac[e, :n].copy(), rw[e, :n].copy())))
                    kept_steps[g] += n
                    recording[e] = budget == "steps"
                length[e] = 0
            recording &= kept_steps[group] < share * horizon  # a spent budget drops the unfinished episodes
            if bar is not None and t < horizon:
                bar.update(1)
            if not recording.any():
                break
        return [[episode for _, episode in sorted(k, key=lambda item: item[0])] for k in kept]


def _padded(episodes: list[list[Episode]], horizon: int, obs_dim: int, act_dim: int, tasks: Sequence[Task]) -> TrajectoryBatch:
    """Stack per-task lists of ``(obs, actions, rewards)`` episodes into a padded batch."""
    n_tasks, n_max = len(episodes), max(len(e) for e in episodes)
    obs = np.zeros((n_tasks, n_max, horizon, obs_dim), np.float32)
    actions = np.zeros((n_tasks, n_max, horizon, act_dim), np.float32)
    rewards = np.zeros((n_tasks, n_max, horizon), np.float32)
    mask = np.zeros((n_tasks, n_max, horizon), np.float32)
    for i, task_episodes in enumerate(episodes):
        for j, (o, a, r) in enumerate(task_episodes):
            n = len(r)
            obs[i, j, :n], actions[i, j, :n], rewards[i, j, :n], mask[i, j, :n] = o, a, r, 1.0
    return TrajectoryBatch(obs, actions, rewards, mask, list(tasks))
