"""Meta-train a policy with MAML-TRPO: ``python scripts/train_rl.py --env navigation2d --iterations 300 --logdir runs/nav``.

Re-running with the same ``--logdir`` resumes from the latest checkpoint (up to ``--iterations``).
``--inner-steps 0`` trains the "pretrained on all tasks" baseline (plain TRPO on the task mixture).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_maml.rl.presets import PRESETS, preset  # noqa: E402
from tf_maml.settings import flag_type, integer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--env", required=True, choices=sorted(PRESETS))
    p.add_argument("--iterations", type=flag_type(integer(1)), required=True,
                   help="train until this many meta-iterations are done (a resumed run counts its earlier ones)")
    p.add_argument("--logdir", required=True)
    p.add_argument("--meta-batch-size", type=int)
    p.add_argument("--n-traj", type=int)
    p.add_argument("--sample-budget", choices=["episodes", "steps"],
                   help="--n-traj whole episodes per task, or --n-traj × horizon steps of whole episodes, a step "
                        "budget as rllab kept (episodes that end early count more); default: the preset's (steps for "
                        "navigation2d, episodes for MuJoCo)")
    p.add_argument("--fast-lr", type=float)
    p.add_argument("--inner-steps", type=int)
    p.add_argument("--first-order", action="store_true", default=None)
    p.add_argument("--num-envs", type=int,
                   help="envs stepped together (episodes per policy call); like --vector-env a speed choice a "
                        "resumed run may change (with a step budget, only to values that keep a task's episodes per wave, "
                        "the largest divisor of --n-traj up to --num-envs: any value >= --n-traj if the run's was)")
    p.add_argument("--vector-env", choices=["sync", "async"],
                   help="run the envs in this process (sync) or one subprocess each (async); a speed choice "
                        "only, the episodes are the same, and a resumed run may change it (default: the run's "
                        "own; for a new run async for MuJoCo, sync for navigation, whose 400 envs would be 400 "
                        "processes)")
    p.add_argument("--loop", action="store_true", help="unrolled task loop instead of vectorized_map")
    p.add_argument("--seed", type=int)
    p.add_argument("--init-from", metavar="EXPORT",
                   help="continue the run a meta-policy export came from (python -m tf_maml.rl.export --steps 0): "
                        "its settings, policy and iteration start the new --logdir")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    from tf_maml.rl.maml_trpo import MAMLTRPO

    overrides = dict(
        meta_batch_size=args.meta_batch_size,
        n_traj=args.n_traj,
        sample_budget=args.sample_budget,
        fast_lr=args.fast_lr,
        inner_steps=args.inner_steps,
        first_order=args.first_order,
        num_envs=args.num_envs,
        asynchronous=None if args.vector_env is None else args.vector_env == "async",
        vectorize=False if args.loop else None,
        seed=args.seed,
    )
    try:  # an existing run resumes with its own settings, if the flags agree with them
        config = preset(args.env, **overrides)
        asked = {"env_id": config.env_id, **{k: v for k, v in overrides.items() if v is not None}}
        learner = MAMLTRPO.for_run(config, args.logdir, asked, progress=args.progress, init_from=args.init_from)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    start = int(learner.iteration.numpy())
    if start:
        print(f"resuming from iteration {start}", flush=True)

    def report(m: dict) -> None:
        print(
            f"it {m['iteration']:4d}  pre {m['return_pre']:9.3f}  post {m['return_post']:9.3f}  "
            f"kl {m['kl']:.4f}  ls {'ok' if m['line_search_accepted'] else 'REJECT'} ({m['line_search_fraction']:.2f})  "
            f"{m['seconds']:.1f}s",
            flush=True,
        )

    try:
        learner.train(args.iterations, on_iteration=report)
    finally:
        learner.close()


if __name__ == "__main__":
    main()
