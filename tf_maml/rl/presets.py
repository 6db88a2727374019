"""Per-family MAML-TRPO settings (paper section 5.3 / appendix), keyed by the short names of the CLI."""

from __future__ import annotations

import dataclasses

from tf_maml.rl.maml_trpo import MAMLTRPOConfig

PRESETS: dict[str, MAMLTRPOConfig] = {
    # a step budget as the paper's code sampled: with whole episodes the meta-policy adapted no better than
    # −8 after 2–3 steps, with it −3.7 (BENCHMARKS.md); episodes end at the goal here, not in MuJoCo
    "navigation2d": MAMLTRPOConfig(
        env_id="tf_maml/Navigation2D-v0", meta_batch_size=20, n_traj=20, fast_lr=0.5, num_envs=400,
        sample_budget="steps",
    ),
    "halfcheetah-vel": MAMLTRPOConfig(
        env_id="tf_maml/HalfCheetahVel-v0", meta_batch_size=40, n_traj=20, fast_lr=0.1, num_envs=20
    ),
    "halfcheetah-dir": MAMLTRPOConfig(
        env_id="tf_maml/HalfCheetahDir-v0", meta_batch_size=40, n_traj=20, fast_lr=0.1, num_envs=20
    ),
    "ant-vel": MAMLTRPOConfig(env_id="tf_maml/AntVel-v1", meta_batch_size=40, n_traj=20, fast_lr=0.1, num_envs=20),
    "ant-dir": MAMLTRPOConfig(env_id="tf_maml/AntDir-v1", meta_batch_size=40, n_traj=20, fast_lr=0.1, num_envs=20),
}


def preset(name: str, **overrides) -> MAMLTRPOConfig:
    """The preset with ``overrides`` (None values ignored, so CLI defaults fall through)."""
    if name not in PRESETS:
        raise KeyError(f"unknown env family {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
