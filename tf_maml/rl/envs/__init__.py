"""Task distributions for meta-RL, registered as gymnasium environments under ``tf_maml/``."""

from __future__ import annotations

import gymnasium as gym

ENV_IDS: dict[str, tuple[str, int]] = {
    "tf_maml/Navigation2D-v0": ("tf_maml.rl.envs.navigation:Navigation2DEnv", 100),
    "tf_maml/HalfCheetahVel-v0": ("tf_maml.rl.envs.mujoco_tasks:HalfCheetahVelEnv", 200),
    "tf_maml/HalfCheetahDir-v0": ("tf_maml.rl.envs.mujoco_tasks:HalfCheetahDirEnv", 200),
    "tf_maml/AntVel-v0": ("tf_maml.rl.envs.mujoco_tasks:AntVelEnv", 200),
    "tf_maml/AntDir-v0": ("tf_maml.rl.envs.mujoco_tasks:AntDirEnv", 200),
}


def register_envs() -> None:
    """Register every task env once (idempotent: re-importing or reloading never raises)."""
    for env_id, (entry_point, horizon) in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=horizon)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """Picklable env factory for vector-env workers (registers first, since a spawned worker starts bare)."""
    register_envs()
    return gym.make(env_id, **kwargs)


__all__ = ["ENV_IDS", "register_envs", "make_env"]
