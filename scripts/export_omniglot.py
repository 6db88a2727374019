#!/usr/bin/env python
"""Evaluate an Omniglot training run on 600+ meta-test tasks and export it for TF Serving, in one command."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_maml.performance import run_tasks_in_parallel, set_graph_optimization  # noqa: E402
from tf_maml.recipes import omniglot  # noqa: E402
from tf_maml.settings import flag_type, integer  # noqa: E402
from tf_maml.training import best_checkpoints  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--base", default="saved_models")
    parser.add_argument("--name", help="model name (default: omniglot_<N>way<K>shot)")
    parser.add_argument("--tasks", type=flag_type(integer(1)), default=600, help="meta-test tasks (default 600)")
    parser.add_argument("--best", action="store_true",
                        help="the run's best epoch by validation accuracy (kept by train_omniglot.py --keep-best) "
                             "instead of its newest checkpoint")
    parser.add_argument("--steps", type=flag_type(integer(1)), metavar="N",
                        help="test-time inner steps to evaluate and serve (default: the run's eval_inner_steps); "
                             "choose them on meta-validation: eval_omniglot.py --classes validation --steps ...")
    omniglot.add_data_arguments(parser)
    args = parser.parse_args()
    set_graph_optimization("fusion")
    run_tasks_in_parallel()
    try:
        checkpoint = best_checkpoints(args.workdir, 1)[0] if args.best else None
        maml, config = omniglot.load_for_evaluation(workdir=args.workdir, checkpoint=checkpoint,
                                                    eval_inner_steps=args.steps)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    data = omniglot.load_classes(args, config.split, parser)
    results = omniglot.evaluate(maml, config, data, args.tasks, seed=0)
    results["meta_steps"] = maml.meta_steps_done()
    if checkpoint:
        results["checkpoint"] = checkpoint  # the run's best epoch, not its newest
    with open(os.path.join(args.workdir, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    print("Exported:", omniglot.export(args.workdir, args.base, data, results, name=args.name, checkpoint=checkpoint,
                                          eval_inner_steps=args.steps))


if __name__ == "__main__":
    main()
