"""Throughput of the episode pipeline alone, to show it is never the bottleneck of a meta-step.

Usage: python benchmarks/bench_episodes.py [--quick] [--json PATH] [--real] [--queries Q]

By default the class tensor is synthetic with the shape of Omniglot's meta-training set (1200
characters × 20 drawings × 28×28×1, ×4 rotations): sampling cost does not depend on pixel values.
``--real`` loads the real data instead (``$TF_MAML_DATA_DIR`` or TFDS's default dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tf_maml.data.episodes import episode_dataset  # noqa: E402

CONFIGS = [("omniglot 5-way 1-shot, meta-batch 32", 5, 1, 32), ("omniglot 20-way 1-shot, meta-batch 16", 20, 1, 16)]
META_STEP_S = 0.25  # a second-order meta-step of the conv net on this CPU, for comparison


def measure(images, rotations: int, ways: int, shots: int, queries: int, meta_batch: int, steps: int) -> dict:
    it = iter(episode_dataset(images, ways, shots, queries, meta_batch, seed=0, rotations=rotations))
    for _ in range(5):  # tracing and prefetch warm-up
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    seconds = (time.perf_counter() - start) / steps
    return {
        "ways": ways, "shots": shots, "queries": queries, "meta_batch": meta_batch, "steps": steps,
        "ms_per_step": 1e3 * seconds, "steps_per_s": 1 / seconds, "episodes_per_s": meta_batch / seconds,
        "fraction_of_meta_step": seconds / META_STEP_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 timed steps instead of 200")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--real", action="store_true", help="use the real Omniglot meta-training split")
    parser.add_argument("--queries", type=int, default=1, help="query examples per class (the paper: = shots)")
    args = parser.parse_args()

    if args.real:
        from tf_maml.data.omniglot import load_omniglot_classes

        split = load_omniglot_classes("paper", download=False).meta_train
        images, rotations = split.images, split.rotations
    else:
        images, rotations = np.random.RandomState(0).rand(1200, 20, 28, 28, 1).astype(np.float32), 4
    steps = 20 if args.quick else 200
    results = {}
    for name, ways, shots, meta_batch in CONFIGS:
        r = measure(images, rotations, ways, shots, args.queries, meta_batch, steps)
        results[name] = r
        print(f"{name} ({args.queries} queries): {r['episodes_per_s']:8.0f} episodes/s, "
              f"{r['ms_per_step']:6.2f} ms/step = {100 * r['fraction_of_meta_step']:.1f}% of a {META_STEP_S} s meta-step")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": "real" if args.real else "synthetic", "results": results}, indent=2))


if __name__ == "__main__":
    main()
