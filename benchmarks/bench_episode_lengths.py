#!/usr/bin/env python
"""How long episodes last under Gaussian action noise, and why they end (MuJoCo task families).

Usage: python benchmarks/bench_episode_lengths.py [--envs tf_maml/AntVel-v0 tf_maml/AntVel-v1 ...] [--stds 1.0 0.5 0.3]
                                                  [--episodes 10] [--quick] [--json PATH]

A meta-policy starts with std 1 (log-std 0) around a near-zero mean, so clipped N(0, σ²) actions show what
its first batches look like. An episode that terminates early holds fewer steps than the horizon; the
sampler collects a fixed number of episodes, so such a batch holds fewer steps too. The cause of each
termination is read from the torso height against the environment's healthy range (Ant), or the state
turning non-finite. ``--quick`` runs 2 episodes at one σ (for the test suite).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmark_results import write_results  # noqa: E402


def termination_cause(env) -> str:
    state = env.state_vector()
    if not np.isfinite(state).all():
        return "non-finite state"
    low, high = getattr(env, "_healthy_z_range", (-np.inf, np.inf))
    z = float(state[2])
    return "torso above range" if z > high else "torso below range" if z < low else "other"


def measure(env_id: str, std: float, episodes: int, seed: int) -> dict:
    import gymnasium as gym

    import tf_maml.rl  # noqa: F401  (registers the tf_maml/ environments)

    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    lengths, causes = [], []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        for t in range(env.spec.max_episode_steps):
            action = np.clip(rng.normal(0.0, std, env.action_space.shape), low, high)
            _, _, terminated, truncated, _ = env.step(action)
            if terminated:
                causes.append(termination_cause(env.unwrapped))
            if terminated or truncated:
                break
        lengths.append(t + 1)
    env.close()
    return {"env": env_id, "std": std, "episodes": episodes, "horizon": env.spec.max_episode_steps,
            "lengths": lengths, "mean_length": float(np.mean(lengths)), "terminated": len(causes),
            "causes": {c: causes.count(c) for c in sorted(set(causes))}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["tf_maml/AntVel-v0", "tf_maml/AntVel-v1"])
    p.add_argument("--stds", type=float, nargs="+", default=[1.0, 0.5, 0.3])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    if args.quick:
        args.stds, args.episodes = args.stds[:1], 2
    rows = []
    print(f"{'env':<24} {'σ':>4} {'mean length':>12} {'terminated':>11}  causes; lengths")
    for env_id in args.envs:
        for std in args.stds:
            row = measure(env_id, std, args.episodes, args.seed)
            rows.append(row)
            print(f"{env_id:<24} {std:>4} {row['mean_length']:>12.1f} {row['terminated']:>7} / {args.episodes:<3} "
                  f"{row['causes']}; {row['lengths']}", flush=True)
    if args.json:
        write_results(args.json, rows, seed=args.seed)


if __name__ == "__main__":
    main()
