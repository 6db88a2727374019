#!/usr/bin/env python
"""Meta-train MAML on sinusoid regression (Finn et al. 2017, section 5.1), evaluate it and plot Figure 2."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_maml.recipes import sinusoid  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=sorted(sinusoid.PRESETS), default="paper")
    parser.add_argument("--workdir", help="run directory (default runs/sinusoid_<preset>); rerunning resumes it "
                                          "with its own settings (only --meta-steps may change)")
    parser.add_argument("--shots", type=int, help="K support (and query) points per task (the paper: 5, 10 or 20)")
    parser.add_argument("--meta-steps", type=int,
                        help="total meta-steps, >= 1 and a multiple of the preset's steps_per_epoch")
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--export", metavar="BASE_DIR", help="also export the meta-learner for TF Serving here")
    args = parser.parse_args()

    overrides = {k: v for k, v in (("shots", args.shots), ("meta_steps", args.meta_steps), ("seed", args.seed)) if v is not None}
    if args.first_order:
        overrides["first_order"] = True
    try:
        config, workdir = sinusoid.config_for_run(args.preset, overrides, args.workdir)
    except ValueError as err:
        parser.error(str(err))
    results = sinusoid.run(config, workdir)
    if args.export:
        results["export"] = sinusoid.export(workdir, args.export)
    print(json.dumps({k: results[k] for k in ("maml", "pretrained", "train_seconds")}, indent=2))
    print(f"Figure:      {results['figure']}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'logs')}")
    print(f"Meta-learner: {os.path.join(workdir, 'maml.keras')}")
    if args.export:
        print(f"Exported:    {results['export']}")


if __name__ == "__main__":
    main()
