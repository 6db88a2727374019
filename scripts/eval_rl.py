"""Evaluate fast adaptation on held-out tasks (MAML paper, Figure 5).

    python scripts/eval_rl.py --logdir runs/navigation2d_maml --pretrained-logdir runs/navigation2d_pretrained \
        --tasks 40 --seed 1234 --json results/nav_eval.json --plot results/nav_eval.png

    python scripts/eval_rl.py --export saved_models/navigation2d_meta_policy --tasks 40 --seed 1234

Reports the mean return (and 95% CI over tasks) after 0..``--steps`` policy-gradient steps for the
MAML policy, the pretrained policy (if given) and a random initialisation. ``--json`` gets
``{"returns": [r0, r1, r2, r3], "ci95": [...]}`` for the MAML policy plus the baselines under keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_maml.settings import flag_type, integer, number  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--logdir", help="MAML-TRPO run directory (config.json + checkpoints)")
    source.add_argument("--export", help="or a meta-policy export carrying its run's settings (e.g. "
                                         "saved_models/ant_dir_meta_policy), where the run directory is not")
    p.add_argument("--pretrained-logdir", help="run trained with --inner-steps 0")
    rate = flag_type(number(0, low_open=True), float)
    p.add_argument("--tasks", type=flag_type(integer(1)), default=40)
    p.add_argument("--n-traj", type=flag_type(integer(1)),
                   help="episodes per task and adaptation step (default: 4,000 steps' worth, as in the paper's "
                        "evaluation code: 40 for navigation, 20 for MuJoCo)")
    p.add_argument("--sample-budget", choices=["episodes", "steps"], default="episodes",
                   help="--n-traj whole episodes per task and step (default), or --n-traj × horizon steps of whole "
                        "episodes, as the paper's evaluation code sampled (rllab): episodes that end early, at a "
                        "goal or by falling, are more of the sample and weigh more in the mean return")
    p.add_argument("--steps", type=flag_type(integer(0)), default=3)
    p.add_argument("--fast-lr", type=rate, help="first adaptation step's rate (default: the run's fast_lr)")
    p.add_argument("--later-ratio", type=rate, default=0.5,
                   help="rate of steps 2.. as a fraction of each policy's first rate (default 0.5, the paper's "
                        "evaluation code; its Ant direction script: 0.01)")
    p.add_argument("--later-lr", type=rate, help="rate of steps 2.. for the MAML policy, and for a baseline without "
                                                 "its own --*-fast-lr (default: --later-ratio × each policy's first)")
    p.add_argument("--pretrained-fast-lr", type=rate,
                   help="the pretrained policy's first rate (default: --fast-lr's); the paper's evaluation code "
                        "tuned the baselines' own, e.g. 0.02 for HalfCheetah velocity, 0.2 for direction")
    p.add_argument("--random-fast-lr", type=rate,
                   help="the random initialisation's first rate (default: --fast-lr's; the paper's code: 0.1 for "
                        "HalfCheetah velocity, 1.0 for Ant direction)")
    p.add_argument("--seed", type=int, default=1234, help="held-out task seed (training uses derived seeds)")
    p.add_argument("--vector-env", choices=["sync", "async"],
                   help="run the envs in this process or one subprocess each, as train_rl.py's flag: a speed choice "
                        "only, the episodes are the same (default: the run's own)")
    p.add_argument("--num-envs", type=flag_type(integer(1)),
                   help="envs stepped together, as train_rl.py's flag: a speed choice (default: the run's own; "
                        "with --sample-budget steps at least --n-traj)")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--no-random", action="store_true")
    p.add_argument("--progress", action="store_true", help="a progress bar over each sampling's env steps")
    args = p.parse_args(argv)
    if args.pretrained_fast_lr is not None and not args.pretrained_logdir:
        p.error("--pretrained-fast-lr is the pretrained policy's rate: pass --pretrained-logdir too")
    if args.random_fast_lr is not None and args.no_random:
        p.error("--random-fast-lr is the random initialisation's rate, which --no-random leaves out")

    import numpy as np

    from tf_maml.rl.evaluation import adaptation_returns, mean_ci95
    from tf_maml.rl.maml_trpo import MAMLTRPO
    from tf_maml.rl.policy import build_policy, policy_params

    overrides = {} if args.vector_env is None else {"asynchronous": args.vector_env == "async"}
    if args.num_envs is not None:
        overrides["num_envs"] = args.num_envs
    try:
        learner = (MAMLTRPO.from_export(args.export, **overrides) if args.export
                   else MAMLTRPO.from_logdir(args.logdir, **overrides))
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    cfg = learner.config
    fast_lr = args.fast_lr if args.fast_lr is not None else cfg.fast_lr
    later_lr = args.later_lr if args.later_lr is not None else fast_lr * args.later_ratio
    sampler = learner.sampler
    sampler.progress = args.progress
    tasks = sampler.sample_tasks(args.tasks, args.seed)
    args.n_traj = args.n_traj or max(1, 4000 // sampler.horizon)
    if args.sample_budget == "steps" and args.num_envs is not None and args.num_envs < args.n_traj:
        learner.close()  # each wave keeps the budget for its own envs: a task split over waves is another sample
        p.error(f"--sample-budget steps with --num-envs {args.num_envs} would split each task's {args.n_traj} "
                f"episodes over several waves, each keeping its share of the budget: pass --num-envs of at least "
                f"{args.n_traj} (--n-traj).")

    policies = {"maml": policy_params(learner.model)}
    if args.pretrained_logdir:
        try:
            pre = MAMLTRPO.from_logdir(args.pretrained_logdir)
        except (ValueError, FileNotFoundError) as err:
            learner.close()
            p.error(f"--pretrained-logdir: {err}")
        pre.close()
        mismatched = {k: (getattr(pre.config, k), getattr(cfg, k)) for k in ("env_id", "hidden", "action_scaling")
                      if getattr(pre.config, k) != getattr(cfg, k)}
        if mismatched:
            learner.close()
            source = f"--export {args.export}" if args.export else f"--logdir {args.logdir}"
            p.error(f"--pretrained-logdir {args.pretrained_logdir} is another problem than {source} "
                    + ", ".join(f"({k}: {a!r} vs {b!r})" for k, (a, b) in mismatched.items())
                    + "; pass a pretrained run of the same task family and policy.")
        policies["pretrained"] = policy_params(pre.model)
    if not args.no_random:
        rand = build_policy(sampler.obs_dim, sampler.act_dim, cfg.hidden, seed=args.seed + 1)
        policies["random"] = policy_params(rand)

    results: dict = {"env_id": cfg.env_id, "tasks": args.tasks, "n_traj": args.n_traj,
                     "sample_budget": args.sample_budget, "fast_lr": fast_lr,
                     "later_lr": later_lr, "seed": args.seed, "iteration": int(learner.iteration.numpy())}
    own_rate = {"pretrained": args.pretrained_fast_lr, "random": args.random_fast_lr}
    for name, params in policies.items():
        first = fast_lr if own_rate.get(name) is None else own_rate[name]
        later = later_lr if own_rate.get(name) is None else first * args.later_ratio
        per_task = adaptation_returns(learner.model, params, sampler, tasks, args.n_traj, first, args.steps,
                                      seed=args.seed, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, later_lr=later,
                                      budget=args.sample_budget)
        mean, ci = mean_ci95(per_task)
        results[name] = {"returns": [float(x) for x in mean], "ci95": [float(x) for x in ci], "fast_lr": first,
                         "later_lr": later}
        print(f"{name:>10}: " + "  ".join(f"{m:8.2f} ± {c:5.2f}" for m, c in zip(mean, ci)), flush=True)
    results["returns"] = results["maml"]["returns"]
    results["ci95"] = results["maml"]["ci95"]
    learner.close()

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        steps = np.arange(args.steps + 1)
        labels = {"maml": "MAML", "pretrained": "pretrained", "random": "random init"}
        for name in policies:
            rate = f" (α {results[name]['fast_lr']:g})" if results[name]["fast_lr"] != fast_lr else ""
            ax.errorbar(steps, results[name]["returns"], yerr=results[name]["ci95"], marker="o", capsize=3,
                        label=labels[name] + rate)
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("average return")
        ax.set_xticks(steps)
        ax.set_title(f"{cfg.env_id} ({args.tasks} held-out tasks)")
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=120)
    return results


if __name__ == "__main__":
    main()
