#!/usr/bin/env python
"""Accuracy against meta-steps from the TensorBoard logs of one or more training runs (a PNG for BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tf_maml.event_logs import read_scalars  # noqa: E402


def epoch_curve(logdir: str, tag: str, steps_per_epoch: int) -> tuple[list[int], list[float]]:
    """(meta-step, value) pairs of an epoch-level Keras scalar such as ``epoch_accuracy``: Keras logs epoch
    ``e`` (0-based) at step ``e``, after meta-step ``(e + 1) * steps_per_epoch``."""
    by_epoch = read_scalars(logdir).get(tag, {})
    return [(e + 1) * steps_per_epoch for e in sorted(by_epoch)], [by_epoch[e] for e in sorted(by_epoch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", default="benchmarks/results/omniglot_accuracy_vs_steps.png")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for workdir in args.workdirs:
        with open(os.path.join(workdir, "config.json")) as f:
            spe = json.load(f)["steps_per_epoch"]
        for split, style in (("train", ":"), ("validation", "-")):
            steps, acc = epoch_curve(os.path.join(workdir, "logs", split), "epoch_accuracy", spe)
            if steps:
                ax.plot(steps, acc, style, label=f"{os.path.basename(workdir.rstrip('/'))} ({split})")
    ax.set_xlabel("meta-steps")
    ax.set_ylabel("post-adaptation query accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
