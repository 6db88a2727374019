"""Shared fixtures for the meta-RL tests: repo root on sys.path, quiet TF, envs registered."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tf_maml.rl  # noqa: E402,F401  (registers the envs)
