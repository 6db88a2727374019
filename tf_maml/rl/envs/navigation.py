"""2D navigation (MAML paper, section 5.3): a point walks from the origin to an unseen goal."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from tf_maml.rl.envs.base import Task, TaskMixin


class Navigation2DEnv(TaskMixin, gym.Env):
    """Observation: the 2D position. Action: a displacement clipped to [−0.1, 0.1] per axis.

    Reward: minus the Euclidean distance to the goal after the move; the goal is U[−0.5, 0.5]².
    The episode ends when the point is within ``goal_tolerance`` of the goal on both axes (as in the
    paper's rllab environment), otherwise at the 100-step TimeLimit.
    """

    metadata = {"render_modes": []}
    max_step = 0.1
    goal_tolerance = 0.01

    def __init__(self, task: Task | None = None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-self.max_step, self.max_step, shape=(2,), dtype=np.float32)
        self.task = task if task is not None else {"goal": [0.25, 0.25]}
        self._position = np.zeros(2, dtype=np.float64)

    def _sample_task(self, rng: np.random.Generator) -> Task:
        return {"goal": [float(x) for x in rng.uniform(-0.5, 0.5, size=2)]}

    def _validate_task(self, task: Task) -> Task:
        goal = np.asarray(task["goal"], dtype=np.float64)
        if goal.shape != (2,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"goal must have 2 finite coordinates, got {task['goal']!r}")
        self._goal = goal
        return {"goal": [float(x) for x in goal]}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._apply_reset_options(options)
        self._position = np.zeros(2, dtype=np.float64)
        return self._position.astype(np.float32), {"task": self.task}

    def step(self, action):
        move = np.clip(np.asarray(action, dtype=np.float64), -self.max_step, self.max_step)
        self._position = self._position + move
        offset = self._position - self._goal
        distance = float(np.linalg.norm(offset))
        reached = bool(np.all(np.abs(offset) < self.goal_tolerance))
        return self._position.astype(np.float32), -distance, reached, False, {"distance": distance}
