"""Shared fixtures for the meta-RL tests: repo root on sys.path, quiet TF, envs registered."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tf_maml.rl  # noqa: E402,F401  (registers the envs)

import pytest  # noqa: E402

from tf_maml.rl.presets import preset  # noqa: E402


@pytest.fixture
def tiny_preset():
    """``preset(family, **overrides)`` at plumbing size: 2 tasks × 2 episodes on 4 envs."""

    def make(family: str = "navigation2d", **overrides):
        return preset(family, **{"meta_batch_size": 2, "n_traj": 2, "num_envs": 4, **overrides})

    return make
