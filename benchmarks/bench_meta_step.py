#!/usr/bin/env python
"""Meta-step speed of tf_maml against a PyTorch reference of the same algorithm, in one run.

The reference computes MAML the way learn2learn and higher do: ``torch.func.functional_call`` with
``torch.autograd.grad(create_graph=True)``, a Python loop over tasks. Both get the same cores: PyTorch is
timed with 1 thread and with one per core and the faster is the reference; TensorFlow runs one op per
thread with tasks side by side (``tf_maml.performance.run_tasks_in_parallel``; ``--tf-threads default``
keeps TensorFlow's own threading).
Prints a table; ``--json PATH`` writes the figures. ``--quick`` runs a few steps of small configurations
(used by the test suite: it checks that the benchmark runs, never how fast).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmark_results import summarize, write_results  # noqa: E402

CONFIGS = {
    # name: (kind, ways/shots, meta_batch, inner_steps)
    "sinusoid": dict(kind="sinusoid", shots=10, meta_batch=25, inner_steps=1, inner_lr=0.01),
    "omniglot-5w1s": dict(kind="omniglot", ways=5, shots=1, meta_batch=32, inner_steps=1, inner_lr=2.0),
    "omniglot-20w1s": dict(kind="omniglot", ways=20, shots=1, meta_batch=16, inner_steps=5, inner_lr=2.0),
}


def make_batch(cfg, rng):
    t = cfg["meta_batch"]
    if cfg["kind"] == "sinusoid":
        k = cfg["shots"]
        x = rng.uniform(-5, 5, (t, 2 * k, 1)).astype(np.float32)
        y = (rng.uniform(0.1, 5, (t, 1, 1)) * np.sin(x - rng.uniform(0, np.pi, (t, 1, 1)))).astype(np.float32)
        return x[:, :k], y[:, :k], x[:, k:], y[:, k:]
    n = cfg["ways"] * cfg["shots"]
    x = rng.uniform(0, 1, (t, 2 * n, 28, 28, 1)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(cfg["ways"]), cfg["shots"]), (t, 2)).astype(np.int32)
    return x[:, :n], y[:, :n], x[:, n:], y[:, n:]


def time_calls(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------------ TensorFlow
def bench_tf(cfg, batch, first_order, task_execution, repeats):
    import keras
    import tensorflow as tf

    from tf_maml import MAML
    from tf_maml.models.convnets import omniglot_convnet
    from tf_maml.models.mlp import sinusoid_mlp

    keras.backend.clear_session()
    if cfg["kind"] == "sinusoid":
        model, loss = sinusoid_mlp(seed=0), "mse"
    else:
        model, loss = omniglot_convnet(cfg["ways"]), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    maml = MAML(model, inner_lr=cfg["inner_lr"], inner_steps=cfg["inner_steps"], first_order=first_order,
                task_execution=task_execution)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    maml._build_training_state(tf.data.Dataset.from_tensors(batch))
    step = tf.function(maml.train_step)
    tensors = tuple(tf.constant(b) for b in batch)
    start = time.perf_counter()
    step(tensors)["loss"].numpy()
    first = time.perf_counter() - start
    times = time_calls(lambda: step(tensors)["loss"].numpy(), repeats)
    return {"first_step_s": first, **summarize(times)}


# --------------------------------------------------------------------------------------------- PyTorch
def bench_torch(cfg, batch, first_order, repeats, threads):
    import torch
    from torch import nn
    from torch.func import functional_call

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if cfg["kind"] == "sinusoid":
        model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
        loss_fn = nn.functional.mse_loss
    else:
        layers, c = [], 1
        for _ in range(4):
            layers += [nn.Conv2d(c, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU()]
            c = 64
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, cfg["ways"]))
        loss_fn = nn.functional.cross_entropy
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    if cfg["kind"] == "sinusoid":
        sx, sy, qx, qy = (torch.from_numpy(b) for b in batch)
    else:
        sx, qx = (torch.from_numpy(b).permute(0, 1, 4, 2, 3).contiguous() for b in (batch[0], batch[2]))
        sy, qy = (torch.from_numpy(b).long() for b in (batch[1], batch[3]))
    names = [n for n, _ in model.named_parameters()]

    def meta_step():
        opt.zero_grad()
        total = 0.0
        for t in range(sx.shape[0]):
            params = dict(model.named_parameters())
            for _ in range(cfg["inner_steps"]):
                inner = loss_fn(functional_call(model, params, (sx[t],)), sy[t])
                grads = torch.autograd.grad(inner, list(params.values()), create_graph=not first_order)
                params = {n: p - cfg["inner_lr"] * g for (n, p), g in zip(params.items(), grads)}
            outer = loss_fn(functional_call(model, params, (qx[t],)), qy[t]) / sx.shape[0]
            outer.backward()
            total += float(outer)
        opt.step()
        return total

    del names
    start = time.perf_counter()
    meta_step()
    first = time.perf_counter() - start
    return {"first_step_s": first, **summarize(time_calls(meta_step, repeats))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    parser.add_argument("--task-execution", nargs="+", default=["vectorized", "map", "loop"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the benchmark works")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--graph-optimization", choices=["full", "fusion", "off"], default="fusion",
                        help="Grappler level (tf_maml.performance.set_graph_optimization)")
    parser.add_argument("--tf-threads", choices=["task-parallel", "default"], default="task-parallel")
    args = parser.parse_args()
    from tf_maml.performance import run_tasks_in_parallel, set_graph_optimization, usable_cores

    set_graph_optimization(args.graph_optimization)
    threads = int(os.environ.get("BENCH_THREADS", usable_cores()))
    if args.tf_threads == "task-parallel":
        run_tasks_in_parallel(threads)
    if args.quick:
        args.repeats = 2
    rows = []
    rng = np.random.default_rng(0)
    for name in args.configs:
        cfg = dict(CONFIGS[name])
        if args.quick:
            cfg["meta_batch"] = 2
        batch = make_batch(cfg, rng)
        for order in args.orders:
            fo = order == "first"
            ref = None
            if not args.no_torch:
                try:
                    for n_threads in sorted({1, threads}):
                        res = bench_torch(cfg, batch, fo, args.repeats, n_threads)
                        rows.append({"config": name, "order": order, "impl": f"torch-reference-{n_threads}t", **res})
                        print(json.dumps(rows[-1]), flush=True)
                        if ref is None or res["median_s"] < ref["median_s"]:
                            ref = res
                except ImportError:
                    print("PyTorch is not installed: pip install -e '.[bench-torch]' for the reference.", file=sys.stderr)
            for te in args.task_execution:
                res = bench_tf(cfg, batch, fo, te, args.repeats)
                if ref:
                    res["speedup_vs_torch"] = ref["median_s"] / res["median_s"]
                rows.append({"config": name, "order": order, "impl": f"tf_maml-{te}", **res})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'config':16} {'order':7} {'impl':22} {'median ms':>10} {'IQR ms':>8} {'1st step s':>10} {'x torch':>8}")
    for r in rows:
        speed = f"{r['speedup_vs_torch']:.2f}" if "speedup_vs_torch" in r else ""
        print(f"{r['config']:16} {r['order']:7} {r['impl']:22} {1e3 * r['median_s']:10.2f} {1e3 * r['iqr_s']:8.2f} "
              f"{r['first_step_s']:10.2f} {speed:>8}")
    if args.json:
        write_results(args.json, rows, threads=threads, tf_threads=args.tf_threads,
                      graph_optimization=args.graph_optimization)


if __name__ == "__main__":
    main()
