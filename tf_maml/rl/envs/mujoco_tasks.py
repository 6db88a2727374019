"""Locomotion task families on gymnasium's MuJoCo HalfCheetah-v5 and Ant-v5 (MAML paper, section 5.3).

The physics and observations are gymnasium's; the reward weights are the MAML reference code's (rllab's
``half_cheetah_env_rand*`` and ``ant_env_rand*``), and the forward term changes per task (target velocity or
direction), which is what makes these meta-learning problems. What differs from the paper's rllab
environments, and so from its returns: gymnasium steps the simulation every 0.05 s (``frame_skip`` 5, as
learn2learn and ProMP do) where rllab stepped every 0.01 s (cheetah) and 0.02 s (Ant), so the 200 steps of
an episode span 10 s rather than 2-4 s; the Ant's v1 ids (``tf_maml/AntVel-v1``, ``AntDir-v1``) take rllab's
0.02 s (``frame_skip`` 2), under which the initial policy's episodes mostly run to the horizon instead of
ending within ~50 steps. rllab's observations add the centre of mass (and the Ant's rotation matrix);
gymnasium's reset noise is uniform ±0.1 where rllab's was N(0, 0.01). ``frame_skip`` can be passed to
``gym.make`` to change the step.
"""

from __future__ import annotations

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from tf_maml.rl.envs.base import Task, TaskMixin


class _VelocityTask(TaskMixin):
    velocity_range: tuple[float, float]

    def _sample_task(self, rng: np.random.Generator) -> Task:
        return {"velocity": float(rng.uniform(*self.velocity_range))}

    def _validate_task(self, task: Task) -> Task:
        velocity = float(task["velocity"])
        if not np.isfinite(velocity):
            raise ValueError(f"velocity must be a finite number, got {task['velocity']!r}")
        return {"velocity": velocity}

    velocity_bonus: float = 0.0  # the reference Ant adds 1 ("make it happy, not suicidal"); the cheetah does not

    def _forward_term(self, x_velocity: float) -> float:
        return -abs(x_velocity - self._task["velocity"]) + self.velocity_bonus


class _DirectionTask(TaskMixin):
    def _sample_task(self, rng: np.random.Generator) -> Task:
        return {"direction": int(rng.choice([-1, 1]))}

    def _validate_task(self, task: Task) -> Task:
        direction = task["direction"]
        if isinstance(direction, bool) or direction not in (-1, 1):  # 1.0 is 1; 1.5 and True are not
            raise ValueError(f"direction must be -1 or 1, got {direction!r}")
        return {"direction": int(direction)}

    def _forward_term(self, x_velocity: float) -> float:
        return self._task["direction"] * x_velocity


class _TaskReset:
    """``reset(options={"task": ...})`` sets the task before gymnasium's reset; ``info`` reports it."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._apply_reset_options(options)
        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, "task": self.task}


class _CheetahTaskEnv(_TaskReset, HalfCheetahEnv):
    """HalfCheetah-v5 with reward ``forward_term(v) − 0.05‖a‖²`` (the rllab/MAML control weight)."""

    def __init__(self, task: Task | None = None, ctrl_cost_weight: float = 0.05, **kwargs) -> None:
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self.task = task if task is not None else self._sample_task(np.random.default_rng(0))

    def _get_rew(self, x_velocity: float, action):
        forward = self._forward_term(x_velocity)
        ctrl_cost = self.control_cost(action)
        return forward - ctrl_cost, {"reward_forward": forward, "reward_ctrl": -ctrl_cost}


class _AntTaskEnv(_TaskReset, AntEnv):
    """Ant-v5 with reward ``forward_term(v) + 0.05 − 0.005‖a‖² − 5e-4‖clip(contact forces, −1, 1)‖²`` (the
    MAML reference code's weights; gymnasium's own are 1.0 survive and 0.5 control, whose control cost at
    the initial policy's std is ~100× the reference's and swamps the forward term)."""

    def __init__(self, task: Task | None = None, ctrl_cost_weight: float = 0.005, healthy_reward: float = 0.05,
                 **kwargs) -> None:
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, healthy_reward=healthy_reward, **kwargs)
        self.task = task if task is not None else self._sample_task(np.random.default_rng(0))

    def _get_rew(self, x_velocity: float, action):
        forward = self._forward_term(x_velocity)
        healthy = self.healthy_reward
        ctrl_cost = self.control_cost(action)
        contact_cost = self.contact_cost
        info = {
            "reward_forward": forward,
            "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
            "reward_survive": healthy,
        }
        return forward + healthy - ctrl_cost - contact_cost, info


class HalfCheetahVelEnv(_VelocityTask, _CheetahTaskEnv):
    """Run at a goal velocity v* ~ U[0, 2]: reward −|v − v*| − 0.05‖a‖²."""

    velocity_range = (0.0, 2.0)


class HalfCheetahDirEnv(_DirectionTask, _CheetahTaskEnv):
    """Run forward (+1) or backward (−1): reward direction·v − 0.05‖a‖²."""


class AntVelEnv(_VelocityTask, _AntTaskEnv):
    """Ant at a goal velocity v* ~ U[0, 3]: forward term −|v − v*| + 1."""

    velocity_range = (0.0, 3.0)
    velocity_bonus = 1.0


class AntDirEnv(_DirectionTask, _AntTaskEnv):
    """Ant forward (+1) or backward (−1): forward term direction·v."""
