#!/usr/bin/env python
"""Meta-train MAML on Omniglot N-way K-shot (Finn et al. 2017, section 5.2); resumes from --workdir."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_maml.performance import GRAPH_OPTIMIZATION_LEVELS, run_tasks_in_parallel, set_graph_optimization  # noqa: E402
from tf_maml.recipes import omniglot  # noqa: E402
from tf_maml.settings import flag_type, integer, number  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=sorted(omniglot.PRESETS),
                        help="N-way K-shot with the paper's settings (default: the run's or --init-from's own, "
                             f"else {omniglot.DEFAULT_PRESET})")
    parser.add_argument("--workdir", help="checkpoints, logs and results "
                                          "(default runs/omniglot_<preset>, e.g. runs/omniglot_5way1shot)")
    parser.add_argument("--meta-steps", type=int,
                        help="total meta-steps, a multiple of --steps-per-epoch (the paper: 60,000)")
    parser.add_argument("--steps-per-epoch", type=int, help="meta-steps between checkpoints and validation")
    parser.add_argument("--split", choices=omniglot.SPLITS)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--batch-norm", choices=["transductive", "running"],
                        help="batch statistics everywhere (the paper's, default) or running statistics at meta-test")
    parser.add_argument("--learn-inner-lr", choices=["per_step", "per_element"],
                        help="learn the inner step sizes: one per weight tensor and step (MAML++'s LSLR) or one per "
                             "weight (Meta-SGD); default: the fixed rate of the preset")
    parser.add_argument("--multi-step-loss", type=flag_type(integer(0)), metavar="META_STEPS",
                        help="MAML++'s multi-step loss: weigh every inner step's query loss, annealed to the last "
                             "step's alone over this many meta-steps (default 0: off)")
    parser.add_argument("--first-order-until", type=flag_type(integer(0)), metavar="META_STEPS",
                        help="MAML++'s derivative-order annealing: first-order meta-gradients for this many "
                             "meta-steps, then second order (default 0: the run's order throughout)")
    parser.add_argument("--cosine-meta-lr", type=flag_type(integer(0)), metavar="META_STEPS",
                        help="MAML++'s cosine annealing of the meta learning rate to 1%% of it over this many "
                             "meta-steps (default 0: constant); with --init-from, on an export trained at a "
                             "constant rate, from the export's meta-step on")
    parser.add_argument("--meta-lr", type=flag_type(number(0, low_open=True), float), metavar="RATE",
                        help="Adam's meta learning rate, the peak of --cosine-meta-lr (default: the preset's, 1e-3); "
                             "with --init-from, only where the continuation begins that annealing (e.g. a lower "
                             "peak to fine-tune an export at another K-shot)")
    parser.add_argument("--warm-restart", action="store_true",
                        help="with --init-from and --cosine-meta-lr: begin the annealing at the export's meta-step "
                             "even if the export annealed already, from the run's meta_lr (SGDR's warm restart)")
    parser.add_argument("--init-from", metavar="EXPORT",
                        help="continue the run an exported meta-learner came from (e.g. saved_models/"
                             "omniglot_20way1shot): its settings, weights, optimizer state and budget start the new "
                             "--workdir, and --meta-steps is the new total")
    parser.add_argument("--per-step-bn", action="store_true",
                        help="MAML++'s per-step batch-norm weights: batch norm's scale and offset learned once per "
                             "inner step, not adapted in the inner loop")
    parser.add_argument("--keep-best", type=flag_type(integer(0)), metavar="K",
                        help="also keep the checkpoints of the K best epochs by validation accuracy, in "
                             "<workdir>/checkpoints/best, for eval_omniglot.py --best (default: as many as the run "
                             f"keeps, else {omniglot.KEEP_BEST}, MAML++'s ensemble; 0: none)")
    omniglot.add_data_arguments(parser)
    parser.add_argument("--eval-tasks", type=flag_type(integer(1)),
                        help="meta-test tasks evaluated after training, >= 1 (default: the run's eval_tasks, 600)")
    parser.add_argument("--graph-optimization", choices=GRAPH_OPTIMIZATION_LEVELS, default="fusion",
                        help="Grappler: fusion (op fusion only), full (slower start) or off")
    parser.add_argument("--op-threads", action="store_true",
                        help="TensorFlow's default threading (split each op across cores) instead of one task per core")
    parser.add_argument("--verbose", type=int, default=1, help="Keras verbosity: 1 progress bar, 2 a line per epoch")
    args = parser.parse_args()

    set_graph_optimization(args.graph_optimization)
    if not args.op_threads:
        run_tasks_in_parallel()
    overrides = {k: v for k, v in (("meta_steps", args.meta_steps), ("steps_per_epoch", args.steps_per_epoch),
                                   ("split", args.split), ("batch_norm", args.batch_norm),
                                   ("multi_step_loss", args.multi_step_loss),
                                   ("first_order_until", args.first_order_until),
                                   ("cosine_meta_lr", args.cosine_meta_lr), ("meta_lr", args.meta_lr)) if v is not None}
    if args.learn_inner_lr:
        overrides["learn_inner_lr"] = True if args.learn_inner_lr == "per_element" else args.learn_inner_lr
    if args.first_order:
        overrides["first_order"] = True
    if args.per_step_bn:
        overrides["per_step_batch_norm"] = True
    try:
        config, workdir = omniglot.config_for_run(args.preset, overrides, args.workdir, init_from=args.init_from,
                                                   warm_restart=args.warm_restart)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    data = omniglot.load_classes(args, config.split, parser)
    maml = omniglot.train(config, workdir, data=data, verbose=args.verbose, init_from=args.init_from,
                          keep_best=args.keep_best)
    eval_tasks = args.eval_tasks if args.eval_tasks is not None else config.eval_tasks
    results = omniglot.evaluate(maml, config, data, eval_tasks, seed=config.seed)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    print(f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'logs')}")


if __name__ == "__main__":
    main()
