#!/usr/bin/env python
"""MAML++'s options against plain MAML at the same budget, on sinusoid regression with several inner steps.

Usage: python benchmarks/bench_maml_plus_plus.py [--meta-steps 10000] [--seeds 0 1] [--variants NAME ...]
                                                 [--quick] [--json PATH]

Each variant (plain MAML; the multi-step loss, annealed over the first tenth of training; per-step
learned inner rates; both; both with derivative-order annealing, first order for the first third) is
meta-trained from the same initialisation on the same episode stream (sinusoid, K = 5, 5 inner steps at
α = 0.01, meta-batch 25, Adam 1e-3, second order), then evaluated on 600 held-out tasks after 0, 1 and 5
inner steps (MSE, mean ± 95% interval). Meta-step time is the median over the training epochs after the
first (which includes tracing), in the same run for every variant, so the ratios compare; ``train_s`` is
the whole training's wall time, tracing included. A variant whose meta-loss turns NaN
(``MetaLossNotFiniteError``: learned rates can grow until the inner loop diverges) is reported with the
meta-step where it stopped. ``--quick`` trains 60 steps on one seed (for the test suite: it checks the
benchmark runs, never the figures).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmark_results import summarize as summarize_times  # noqa: E402
from benchmark_results import write_results  # noqa: E402

SHOTS, INNER_STEPS, INNER_LR, META_BATCH = 5, 5, 0.01, 25


def variants(meta_steps: int) -> dict[str, dict]:
    anneal = max(meta_steps // 10, 1)
    return {
        "maml": {},
        "multi-step loss": {"multi_step_loss": anneal},
        "per-step rates": {"learn_inner_lr": "per_step"},
        "both (MAML++)": {"multi_step_loss": anneal, "learn_inner_lr": "per_step"},
        "both + DA": {"multi_step_loss": anneal, "learn_inner_lr": "per_step", "first_order_until": meta_steps // 3},
    }


def run_variant(options: dict, seed: int, meta_steps: int, steps_per_epoch: int, eval_tasks: int) -> dict:
    import keras

    from tf_maml import MAML, MetaLossNotFiniteError
    from tf_maml.data.sinusoid import sinusoid_episodes
    from tf_maml.evaluation import scores_after_adaptation, summarize, task_mse
    from tf_maml.models.mlp import sinusoid_mlp

    maml = MAML(sinusoid_mlp(seed=seed), inner_lr=INNER_LR, inner_steps=INNER_STEPS, **options)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", steps_per_execution=min(100, steps_per_epoch))
    epoch_seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    try:
        maml.fit(sinusoid_episodes(META_BATCH, SHOTS, seed=seed), steps_per_epoch=steps_per_epoch,
                 epochs=meta_steps // steps_per_epoch, callbacks=[EpochTimer()], verbose=0)
    except MetaLossNotFiniteError:
        return {"seed": seed, "meta_steps": meta_steps, "diverged_at": maml.meta_steps_done()}
    held_out = sinusoid_episodes(100, SHOTS, seed=seed + 10_000)
    scores = summarize(scores_after_adaptation(maml, held_out, (0, 1, INNER_STEPS), task_mse, eval_tasks))
    timing = summarize_times([s / steps_per_epoch for s in (epoch_seconds[1:] or epoch_seconds)])
    row = {"seed": seed, "meta_steps": meta_steps, **{f"mse_{k}": m for k, (m, _) in scores.items()},
           **{f"ci95_{k}": c for k, (_, c) in scores.items()}, "step_ms": 1e3 * timing["median_s"],
           "step_iqr_ms": 1e3 * timing["iqr_s"], "train_s": sum(epoch_seconds)}
    if options.get("learn_inner_lr") == "per_step":
        rates = [r for r in maml.inner_rates() if r is not None]
        row["mean_rate_per_step"] = [float(sum(r[k] for r in rates) / len(rates)) for k in range(INNER_STEPS)]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meta-steps", type=int, default=10_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", choices=list(variants(1)), metavar="NAME",
                   help=f"run only these (default all): {', '.join(map(repr, variants(1)))}")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    meta_steps, steps_per_epoch, eval_tasks = args.meta_steps, 1000, 600
    if args.quick:
        meta_steps, steps_per_epoch, eval_tasks, args.seeds = 60, 30, 50, args.seeds[:1]
    rows = []
    print(f"sinusoid K={SHOTS}, {INNER_STEPS} inner steps, {meta_steps} meta-steps; held-out MSE ({eval_tasks} tasks)")
    print(f"{'variant':<16} {'seed':>4} {'0 steps':>8} {'1 step':>8} {'5 steps':>16} {'step ms':>8} {'train s':>8}")
    for seed in args.seeds:
        for name, options in variants(meta_steps).items():
            if args.variants and name not in args.variants:
                continue
            row = {"variant": name, **run_variant(options, seed, meta_steps, steps_per_epoch, eval_tasks)}
            rows.append(row)
            if "diverged_at" in row:
                print(f"{name:<16} {seed:>4}   meta-loss NaN at meta-step {row['diverged_at']}", flush=True)
                continue
            print(f"{name:<16} {seed:>4} {row['mse_0']:8.3f} {row['mse_1']:8.3f} "
                  f"{row[f'mse_{INNER_STEPS}']:8.3f} ± {row[f'ci95_{INNER_STEPS}']:.3f} {row['step_ms']:8.2f} "
                  f"{row['train_s']:8.1f}", flush=True)
    if args.json:
        write_results(args.json, rows, shots=SHOTS, inner_steps=INNER_STEPS, inner_lr=INNER_LR, meta_batch=META_BATCH)


if __name__ == "__main__":
    main()
