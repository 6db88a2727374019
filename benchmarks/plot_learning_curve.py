#!/usr/bin/env python
"""Accuracy against meta-steps from the TensorBoard logs of one or more training runs (a PNG for BENCHMARKS.md).

Run directories rarely outlive a session, so ``--data PATH`` also writes the plotted points as JSON, and a
JSON written so may be given in place of a run directory: a later curve extends an earlier one without its runs.

    python benchmarks/plot_learning_curve.py runs/a runs/b --out curve.png --data curve.json
    python benchmarks/plot_learning_curve.py curve.json runs/c --out curve.png --data curve.json
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tf_maml.event_logs import read_scalars  # noqa: E402

SPLITS = {"train": ":", "validation": "-"}


def epoch_curve(logdir: str, tag: str, steps_per_epoch: int) -> tuple[list[int], list[float]]:
    """(meta-step, value) pairs of an epoch-level Keras scalar such as ``epoch_accuracy``: Keras logs epoch
    ``e`` (0-based) at step ``e``, after meta-step ``(e + 1) * steps_per_epoch``."""
    by_epoch = read_scalars(logdir).get(tag, {})
    return [(e + 1) * steps_per_epoch for e in sorted(by_epoch)], [by_epoch[e] for e in sorted(by_epoch)]


def run_curves(workdir: str) -> list[dict]:
    """The accuracy curves of one run directory, one entry per split that logged any."""
    with open(os.path.join(workdir, "config.json")) as f:
        spe = json.load(f)["steps_per_epoch"]
    curves = []
    for split in SPLITS:
        steps, acc = epoch_curve(os.path.join(workdir, "logs", split), "epoch_accuracy", spe)
        if steps:
            curves.append({"run": os.path.basename(workdir.rstrip("/")), "split": split,
                           "meta_steps": steps, "accuracy": [float(a) for a in acc]})
    return curves


def load_curves(sources: list[str]) -> list[dict]:
    """Curves from run directories and from JSON files an earlier ``--data`` wrote, in the order given."""
    curves = []
    for source in sources:
        if source.endswith(".json"):
            with open(source) as f:
                curves.extend(json.load(f)["curves"])
        else:
            curves.extend(run_curves(source))
    return curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="run directories, or curve JSONs written by --data")
    parser.add_argument("--out", default="benchmarks/results/omniglot_accuracy_vs_steps.png")
    parser.add_argument("--data", metavar="PATH", help="also write the plotted points here (JSON)")
    args = parser.parse_args(argv)
    curves = load_curves(args.sources)
    if not curves:
        parser.error(f"no accuracy logged in {args.sources}: give run directories with logs/train or "
                     "logs/validation, or JSONs written by --data")
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in curves:
        ax.plot(c["meta_steps"], c["accuracy"], SPLITS[c["split"]], label=f"{c['run']} ({c['split']})")
    ax.set_xlabel("meta-steps")
    ax.set_ylabel("post-adaptation query accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)
    if args.data:
        with open(args.data, "w") as f:
            json.dump({"curves": curves}, f)
        print(args.data)


if __name__ == "__main__":
    main()
