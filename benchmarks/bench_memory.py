#!/usr/bin/env python
"""Peak memory of a second-order meta-step against inner steps, with and without ``recompute_inner_loop``.

Usage: python benchmarks/bench_memory.py [--steps 1 5 10 20] [--meta-batch 32] [--quick] [--json PATH]

Omniglot 5-way 1-shot with the paper's conv net (``omniglot_convnet``), 1 query per class, second order,
``task_execution="loop"``, Grappler off (``tf_maml.performance.set_graph_optimization("off")``); random images
(memory does not depend on pixel values). Each configuration runs in a fresh subprocess, which traces the
meta-step, then runs it ``--runs`` times and reports:

* ``peak_rss_mb``: the process's peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``), tracing included;
* ``before_run_mb``: resident memory before each step (the first follows tracing);
* ``run_peak_mb``: the highest resident memory sampled (every 2 ms) during each step, and
  ``step_mb``: peak minus resident-before for the last step, i.e. the memory a step needs once the
  one-time costs of the first run (kernels, thread pools, allocator caches) are paid.

Children run with ``MALLOC_MMAP_THRESHOLD_=4096 MALLOC_TRIM_THRESHOLD_=0`` (unless set already), so
freed tensors leave resident memory and ``step_mb`` of a later step measures live tensor memory rather
than malloc's high-water mark (with glibc's defaults it reads 25 MiB instead of 97 for 10 steps).
On CPU the process's resident memory is dominated by the traced graph, which grows with the inner
steps with or without recomputation; ``step_mb`` is what recomputation reduces.
``tf.config.experimental.get_memory_info("CPU:0")`` is no help: it counts eager allocations but
reported a peak of about 1 MB across a ``tf.function`` meta-step.

``--quick`` runs one inner step at meta-batch 2, with and without recomputation (for the test suite: it
checks the benchmark runs, never the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

from benchmark_results import write_results

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MB


class RssSampler(threading.Thread):
    """Samples this process's resident memory while the meta-step runs (TF releases the GIL)."""

    def __init__(self, interval_s: float = 0.002):
        super().__init__(daemon=True)
        self.interval_s, self.peak_mb, self._done = interval_s, current_rss_mb(), threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            time.sleep(self.interval_s)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak_mb, current_rss_mb())


def child(args) -> None:
    """One configuration, in this (fresh) process; prints one JSON line."""
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_maml import MAML
    from tf_maml.models.convnets import omniglot_convnet
    from tf_maml.performance import set_graph_optimization

    set_graph_optimization("off")
    ways, shots, queries, t = 5, 1, 1, args.meta_batch
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (t, ways * (shots + queries), 28, 28, 1)).astype(np.float32)
    y = np.tile(np.arange(ways, dtype=np.int32), (t, shots + queries))
    batch = tuple(tf.constant(a) for a in (x[:, : ways * shots], y[:, : ways * shots], x[:, ways * shots :],
                                           y[:, ways * shots :]))
    keras.utils.set_random_seed(0)
    maml = MAML(omniglot_convnet(ways), inner_lr=0.4, inner_steps=args.inner_steps, task_execution="loop",
                recompute_inner_loop=args.recompute)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    maml._build_training_state(tf.data.Dataset.from_tensors(batch))
    step = tf.function(maml.train_step)
    start = time.perf_counter()
    step.get_concrete_function(batch)
    trace_s = time.perf_counter() - start
    times, befores, peaks = [], [], []
    for _ in range(args.runs):
        befores.append(current_rss_mb())
        sampler = RssSampler()
        sampler.start()
        start = time.perf_counter()
        loss = float(step(batch)["loss"])
        times.append(time.perf_counter() - start)
        peaks.append(sampler.stop())
    print(json.dumps({
        "inner_steps": args.inner_steps, "recompute": args.recompute, "meta_batch": t,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_run_mb": befores, "run_peak_mb": peaks, "step_mb": peaks[-1] - befores[-1],
        "trace_s": trace_s, "step_s": times, "loss": loss,
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20], help="inner steps to measure")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-step (default 32)")
    parser.add_argument("--runs", type=int, default=2, help="meta-steps run after tracing (default 2)")
    parser.add_argument("--quick", action="store_true", help="one inner step, meta-batch 2")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inner-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--recompute", type=int, choices=[0, 1], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.recompute = bool(args.recompute)
        return child(args)
    if args.quick:
        args.steps, args.meta_batch = [1], 2

    rows = []
    for steps in args.steps:
        for recompute in (0, 1):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--inner-steps", str(steps),
                   "--recompute", str(recompute), "--meta-batch", str(args.meta_batch), "--runs", str(args.runs)]
            # Large blocks mmapped and unmapped when freed, so resident memory follows live tensors
            # instead of staying at malloc's high-water mark after the first step.
            env = {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0", **os.environ}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"configuration inner_steps={steps} recompute={bool(recompute)} failed "
                                 f"(exit {proc.returncode})")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)

    print(f"\nOmniglot 5-way 1-shot, second order, meta-batch {args.meta_batch}, task_execution=loop "
          f"(MiB; last of {args.runs} steps: before, run peak, step = the difference)")
    print(f"{'steps':>5} {'recompute':>9} {'peak RSS':>9} {'before':>8} {'run peak':>9} {'step':>8} "
          f"{'step s':>7} {'trace s':>8}")
    for r in rows:
        print(f"{r['inner_steps']:>5} {str(r['recompute']):>9} {r['peak_rss_mb']:9.0f} {r['before_run_mb'][-1]:8.0f} "
              f"{r['run_peak_mb'][-1]:9.0f} {r['step_mb']:8.0f} {r['step_s'][-1]:7.2f} {r['trace_s']:8.1f}")
    if args.json:
        write_results(args.json, rows)


if __name__ == "__main__":
    main()
