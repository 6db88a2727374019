#!/usr/bin/env python
"""Accuracy of a meta-trained Omniglot learner on freshly sampled meta-test tasks (mean and 95% CI); with
``--classes validation``, on meta-validation characters, to choose settings such as ``--steps`` there.
Several ``--saved-model`` (or ``--workdir``) paths are evaluated as one ensemble: each adapts to every task
and their logits are averaged, as MAML++ reports its figures (``--workdir RUN --best 5``: the run's five best
epochs by validation, MAML++'s own ensemble)."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_maml.performance import run_tasks_in_parallel, set_graph_optimization  # noqa: E402
from tf_maml.recipes import omniglot  # noqa: E402
from tf_maml.settings import flag_type, integer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", nargs="+", action="extend",
                        help="a training directory: its newest checkpoint is evaluated (several: an ensemble)")
    source.add_argument("--saved-model", nargs="+", action="extend",
                        help="a shipped meta-learner, e.g. saved_models/omniglot_5way1shot (several: an ensemble)")
    parser.add_argument("--best", type=flag_type(integer(1)), metavar="K",
                        help="with --workdir: the ensemble of each run's K best checkpoints by validation accuracy "
                             "(kept by train_omniglot.py --keep-best) instead of its newest")
    parser.add_argument("--tasks", type=flag_type(integer(1)), default=600, help="meta-test tasks (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=flag_type(integer(1)),
                        help="support images per class (and query images, unless the run set its own number), if "
                             "not those the learner was meta-trained with (e.g. a 1-shot learner on 5-shot tasks); "
                             "the ways are the model's")
    parser.add_argument("--steps", type=flag_type(integer(0)), nargs="+",
                        help="adaptation steps to report (default 0, train, eval steps)")
    parser.add_argument("--classes", choices=omniglot.EVALUATION_CLASSES, default="test",
                        help="characters the tasks are drawn from: meta-test (default, the reported figure) or "
                             "meta-validation (never trained on either: choose --steps or --shots there)")
    parser.add_argument("--rotations", type=int, choices=(1, 4),
                        help="4: each character in four rotations, distinct classes (the MAML paper's protocol, the "
                             "default); 1: unrotated characters only (MAML++'s test protocol)")
    omniglot.add_data_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help='write {"accuracy": ..., "ci95": ..., "tasks": ...} here (for '
                                                       'an ensemble, or --best, also "ensemble": its paths, and '
                                                       '"meta_steps" is a list, one per member)')
    args = parser.parse_args()
    if args.best and not args.workdir:
        parser.error("--best picks checkpoints of training directories: give them with --workdir.")

    set_graph_optimization("fusion")
    run_tasks_in_parallel()
    try:
        plan, config = omniglot.plan_ensemble(workdirs=args.workdir or (), saved_models=args.saved_model or (),
                                              best=args.best or 0)
        if args.shots:
            config = omniglot.with_shots(config, args.shots)
        members = [member.load() for member in plan]
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    data = omniglot.load_classes(args, config.split, parser)
    if args.json:  # before minutes of evaluation, not after
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    results = omniglot.evaluate(members, config, data, args.tasks, seed=args.seed,
                                steps=tuple(args.steps) if args.steps else None, classes=args.classes,
                                rotations=args.rotations)
    results.update(shots=config.shots, queries=config.query_count)
    meta_steps = [m.meta_steps_done() if getattr(m, "optimizer", None) else None for m in members]
    results["meta_steps"] = meta_steps[0] if len(members) == 1 else meta_steps
    if len(members) > 1 or args.best:  # the checkpoints of --best, even one
        results["ensemble"] = [member.name for member in plan]
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
