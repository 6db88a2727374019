"""Throughput of the meta-RL stack: sampler env-steps/s and seconds per MAML-TRPO meta-iteration.

    python benchmarks/bench_rl.py            # paper-sized Navigation2D (20 tasks × 20 episodes) + HalfCheetah
    python benchmarks/bench_rl.py --quick    # tiny sizes, for the test suite
    python benchmarks/bench_rl.py --vector-envs   # MuJoCo: subprocess vs in-process vector envs
    python benchmarks/bench_rl.py --packing saved_models/navigation2d_meta_policy   # padded vs packed update
    python benchmarks/bench_rl.py --sampler-envs 4 80   # Navigation2D evaluation batches by number of envs

Meta-iteration time is measured for both ways of handling the task axis (``vectorized_map`` vs an
unrolled loop), excluding the first (tracing) iteration, which is reported separately.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench_sampler(env_id: str, tasks: int, n_traj: int, num_envs: int, repeats: int,
                  asynchronous: bool | None = None) -> dict:
    from tf_maml.rl.policy import build_policy, policy_params
    from tf_maml.rl.sampler import Sampler

    probe = Sampler(env_id, build_policy(1, 1), num_envs=1, asynchronous=False)
    model = build_policy(probe.obs_dim, probe.act_dim, seed=0)
    probe.close()
    sampler = Sampler(env_id, model, num_envs=num_envs, asynchronous=asynchronous)
    task_list = sampler.sample_tasks(tasks, 0)
    sampler.sample(policy_params(model), task_list, n_traj, seed=0)  # warm-up: trace + worker start
    t0, steps = time.perf_counter(), 0
    for r in range(repeats):
        steps += sampler.sample(policy_params(model), task_list, n_traj, seed=r + 1).env_steps
    dt = time.perf_counter() - t0
    sampler.close()
    return {"bench": "sampler", "env_id": env_id, "tasks": tasks, "n_traj": n_traj, "num_envs": num_envs,
            "vector_env": "async" if sampler.asynchronous else "sync", "env_steps_per_s": steps / dt}


def bench_meta_iteration(env: str, iterations: int, vectorize: bool, **overrides) -> dict:
    from tf_maml.rl.maml_trpo import MAMLTRPO
    from tf_maml.rl.presets import preset

    learner = MAMLTRPO(preset(env, vectorize=vectorize, **overrides))
    t0 = time.perf_counter()
    learner.step()  # the first iteration traces; timed on its own
    trace_s = time.perf_counter() - t0
    times, sampling = [], []
    for _ in range(iterations):
        m = learner.step()
        times.append(m["seconds"])
        sampling.append(m["seconds_sampling"])
    learner.close()
    c = learner.config
    return {"bench": "meta_iteration", "env_id": c.env_id, "meta_batch_size": c.meta_batch_size, "n_traj": c.n_traj,
            "task_axis": "vectorized_map" if vectorize else "loop", "first_iteration_s": trace_s,
            "seconds_per_meta_iteration": sum(times) / len(times), "sampling_s": sum(sampling) / len(sampling)}


def bench_packing(export: str, repeats: int) -> dict:
    """The meta-update (natural gradient + line search) on one step-budget meta-batch, laid out one episode
    per row (padded) and packed (:func:`tf_maml.rl.maml_trpo.pack_rows`), from the same θ, alternating."""
    import numpy as np

    from tf_maml.rl.maml_trpo import MAMLTRPO, to_pg_data

    learner = MAMLTRPO.from_export(export)
    c = learner.config
    if c.inner_steps != 1:
        raise SystemExit(f"--packing times one-inner-step runs; {export} was trained with {c.inner_steps}.")
    it = int(learner.iteration.numpy())
    _, pre_batch, _, post_batch, _ = learner.sample_meta_batch(it)
    layouts = {pack: ((to_pg_data(pre_batch, c.gamma, c.gae_lambda, pack=pack),),
                      to_pg_data(post_batch, c.gamma, c.gae_lambda, pack=pack)) for pack in (False, True)}
    theta = learner.theta()
    times: dict[bool, list[float]] = {False: [], True: []}
    result: dict[bool, np.ndarray] = {}
    for r in range(repeats + 1):  # the first round traces
        for pack, (pre, post) in layouts.items():
            learner.set_theta(theta)
            t0 = time.perf_counter()
            learner.meta_update(pre, post, it + 1)
            if r:
                times[pack].append(time.perf_counter() - t0)
            result[pack] = learner.theta().numpy()
    learner.close()
    padded_s, packed_s = (float(np.median(times[p])) for p in (False, True))
    return {"bench": "packing", "export": export, "sample_budget": c.sample_budget,
            "meta_batch_size": c.meta_batch_size, "n_traj": c.n_traj, "env_steps": post_batch.env_steps,
            "rows_padded": int(layouts[False][1].mask.shape[1]), "rows_packed": int(layouts[True][1].mask.shape[1]),
            "meta_update_s_padded": padded_s, "meta_update_s_packed": packed_s, "speedup": padded_s / packed_s,
            "step_norm": float(np.linalg.norm(result[False] - theta.numpy())),
            "theta_difference_norm": float(np.linalg.norm(result[True] - result[False]))}  # float32 round-off


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--vector-envs", action="store_true",
                   help="only compare vector envs for MuJoCo at the reduced batch (10 tasks x 10 episodes): "
                        "subprocess (async) against in-process (sync), by number of envs")
    p.add_argument("--packing", metavar="EXPORT",
                   help="only time the meta-update on one step-budget batch of this meta-policy export, padded "
                        "(one episode per row) against packed rows")
    p.add_argument("--sampler-envs", type=int, nargs="+", metavar="N",
                   help="only time Navigation2D sampling of an evaluation's batch (2 tasks x 40 episodes) with N "
                        "in-process envs each: with few envs the per-step policy call dominates")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.packing:
        runs = [lambda: bench_packing(args.packing, args.repeats)]
    elif args.sampler_envs:
        runs = [functools.partial(bench_sampler, "tf_maml/Navigation2D-v0", 2, 40, n, args.repeats, False)
                for n in args.sampler_envs]
    elif args.quick:
        runs = [
            lambda: bench_sampler("tf_maml/Navigation2D-v0", 4, 4, 16, 1),
            lambda: bench_meta_iteration("navigation2d", 1, True, meta_batch_size=3, n_traj=3, num_envs=9),
        ]
    elif args.vector_envs:
        runs = [
            functools.partial(bench_sampler, env_id, 10, 10, num_envs, 2, asynchronous)
            for env_id in ("tf_maml/HalfCheetahDir-v0", "tf_maml/AntDir-v0")
            for num_envs, asynchronous in ((10, True), (20, True), (10, False), (100, False))
        ]
    else:
        runs = [
            lambda: bench_sampler("tf_maml/Navigation2D-v0", 20, 20, 400, 3),
            lambda: bench_sampler("tf_maml/HalfCheetahVel-v0", 2, 20, 20, 1),
            lambda: bench_sampler("tf_maml/HalfCheetahVel-v0", 2, 20, 2, 1),
            lambda: bench_meta_iteration("navigation2d", 3, True),
            lambda: bench_meta_iteration("navigation2d", 3, False),
        ]
    for run in runs:
        print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    main()
