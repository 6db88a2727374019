#!/usr/bin/env python
"""Accuracy against meta-steps from the TensorBoard logs of one or more training runs (a PNG for BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow as tf  # noqa: E402


def read_scalars(logdir: str, tag: str, steps_per_epoch: int) -> tuple[list[int], list[float]]:
    """(meta-step, value) pairs of an epoch-level Keras scalar such as ``epoch_accuracy``."""
    points = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    points[(event.step + 1) * steps_per_epoch] = float(tf.make_ndarray(value.tensor))
    steps = sorted(points)
    return steps, [points[s] for s in steps]


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
            steps, acc = read_scalars(os.path.join(workdir, "logs", split), "epoch_accuracy", spe)
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
