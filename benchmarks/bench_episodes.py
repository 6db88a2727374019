"""Throughput of the episode pipeline alone against the meta-step it feeds, measured in the same run.

Usage: python benchmarks/bench_episodes.py [--quick] [--json PATH] [--real] [--queries Q]

The meta-step is the paper's second-order step of the Omniglot conv net (``bench_meta_step.bench_tf``), run
with the training scripts' settings (one task per core, Grappler fusion); the pipeline runs under the same
settings, as it does in training. ``--quick`` times a few steps, with a first-order meta-step (cheap to trace).

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

from bench_meta_step import CONFIGS as META_STEP_CONFIGS, bench_tf, make_batch  # noqa: E402
from tf_maml.data.episodes import episode_dataset  # noqa: E402
from tf_maml.performance import run_tasks_in_parallel, set_graph_optimization  # noqa: E402

CONFIGS = {"omniglot 5-way 1-shot, meta-batch 32": "omniglot-5w1s", "omniglot 20-way 1-shot, meta-batch 16": "omniglot-20w1s"}


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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 pipeline steps, 2 first-order meta-steps (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--real", action="store_true", help="use the real Omniglot meta-training split")
    parser.add_argument("--queries", type=int, default=1, help="query examples per class (the paper: = shots)")
    args = parser.parse_args()

    set_graph_optimization("fusion")  # before any TensorFlow op, loading the data included
    run_tasks_in_parallel()
    if args.real:
        from tf_maml.data.omniglot import load_omniglot_classes

        split = load_omniglot_classes("paper", download=False).meta_train
        images, rotations = split.images, split.rotations
    else:
        images, rotations = np.random.RandomState(0).rand(1200, 20, 28, 28, 1).astype(np.float32), 4
    steps, repeats, first_order = (20, 2, True) if args.quick else (200, 10, False)
    results = {}
    for name, key in CONFIGS.items():
        cfg = META_STEP_CONFIGS[key]
        r = measure(images, rotations, cfg["ways"], cfg["shots"], args.queries, cfg["meta_batch"], steps)
        meta_step = bench_tf(cfg, make_batch(cfg, np.random.default_rng(0)), first_order, "loop", repeats)
        r["meta_step_ms"] = 1e3 * meta_step["median_s"]
        r["meta_step"] = "first-order" if first_order else "second-order"
        r["fraction_of_meta_step"] = r["ms_per_step"] / r["meta_step_ms"]
        results[name] = r
        print(f"{name} ({args.queries} queries): {r['episodes_per_s']:8.0f} episodes/s, {r['ms_per_step']:6.2f} ms "
              f"per meta-batch = {100 * r['fraction_of_meta_step']:.1f}% of a {r['meta_step_ms']:.0f} ms "
              f"{r['meta_step']} meta-step")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": "real" if args.real else "synthetic", "results": results}, indent=2))


if __name__ == "__main__":
    main()
