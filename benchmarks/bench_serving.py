"""Latency of exported models as a server runs them: ``tf.saved_model.load`` + a signature call.

Usage: python benchmarks/bench_serving.py [--base saved_models] [--demo] [--quick] [--json PATH]

For every ``<base>/<name>/`` (its highest version) and each signature (``serving_default``, and
``adapt_and_predict`` for meta-learners) it times single requests of batch 1 and 32 (query examples for
``adapt_and_predict``, whose support set has ``--support`` examples, or N for an N-way classifier,
i.e. 1-shot) and prints p50/p95 in milliseconds. ``--demo`` first exports a sinusoid MLP and an
Omniglot 5-way conv net (untrained: latency does not depend on the weights) into a temporary base.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_maml.serving import read_metadata, resolve_version_dir  # noqa: E402

BATCHES = (1, 32)


def export_demo_models(base: str) -> None:
    """A sinusoid meta-learner (10 inner steps), one adapted copy, and an Omniglot 5-way one (3 steps)."""
    import keras

    from tf_maml import MAML
    from tf_maml.models.convnets import omniglot_convnet
    from tf_maml.models.mlp import sinusoid_mlp
    from tf_maml.serving import export_adapted, export_meta_learner

    sinusoid = MAML(sinusoid_mlp(seed=0), inner_lr=0.01, eval_inner_steps=10)
    sinusoid.compile(optimizer="adam", loss="mse")
    export_meta_learner(sinusoid, base, "sinusoid")
    rng = np.random.default_rng(0)
    sx = rng.uniform(-5, 5, (10, 1)).astype(np.float32)
    export_adapted(sinusoid, sx, np.sin(sx), base, "sinusoid_adapted")
    omniglot = MAML(omniglot_convnet(5), inner_lr=0.4, eval_inner_steps=3)
    omniglot.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    export_meta_learner(omniglot, base, "omniglot_5way")


def example(spec: tf.TensorSpec, rows: int, classes: int, rng: np.random.Generator) -> tf.Tensor:
    shape = [rows if d is None else d for d in spec.shape]
    if spec.dtype.is_integer:
        return tf.constant(np.arange(rows).reshape(shape) % max(classes, 1), spec.dtype)
    return tf.constant(rng.normal(size=shape), spec.dtype)


def time_calls(fn, kwargs: dict, calls: int) -> dict:
    for _ in range(5):  # first calls warm up the runtime's kernels and allocator
        fn(**kwargs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        out = fn(**kwargs)
        for value in out.values():  # a server serialises the result: include getting it to the host
            value.numpy()
        times.append(time.perf_counter() - start)
    ms = 1e3 * np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "calls": calls}


def bench_model(name: str, path: str, calls: int, support: int) -> list[dict]:
    start = time.perf_counter()
    loaded = tf.saved_model.load(path)
    load_s = time.perf_counter() - start
    try:
        meta = read_metadata(path)
    except OSError:
        meta = {}
    classes = int(meta.get("num_classes", 0))
    support_rows = classes if classes else support
    rng = np.random.default_rng(0)
    rows = []
    for sig_name, fn in sorted(loaded.signatures.items()):
        specs = fn.structured_input_signature[1]
        for batch in BATCHES:
            kwargs = {
                key: example(spec, support_rows if key.startswith("support") else batch, classes, rng)
                for key, spec in specs.items()
            }
            result = time_calls(fn, kwargs, calls)
            rows.append({"model": name, "version": os.path.basename(path), "signature": sig_name, "batch": batch,
                         "support": support_rows if "support_x" in specs else 0,
                         "inner_steps": meta.get("inner_steps") if "support_x" in specs else 0,
                         "load_s": load_s, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="saved_models", help="TF Serving base directory (default: saved_models)")
    parser.add_argument("--demo", action="store_true", help="benchmark freshly exported demo models instead")
    parser.add_argument("--quick", action="store_true", help="30 timed calls per case instead of 300")
    parser.add_argument("--support", type=int, default=10, help="support examples for regression (default 10)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    base = args.base
    tmp = None
    if args.demo:
        tmp = tempfile.TemporaryDirectory(prefix="tf_maml_bench_")
        base = tmp.name
        export_demo_models(base)
    names = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))) if os.path.isdir(base) else []
    models = []
    for name in names:
        try:
            models.append((name, resolve_version_dir(os.path.join(base, name))))
        except FileNotFoundError:
            continue
    if not models:
        raise SystemExit(f"No exported models under {base!r}; export some (scripts/export.py) or pass --demo.")
    calls = 30 if args.quick else 300
    rows = [row for name, path in models for row in bench_model(name, path, calls, args.support)]

    print(f"{'model':<20} {'v':>3} {'signature':<18} {'batch':>5} {'support':>7} {'steps':>5} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'load s':>7}")
    for r in rows:
        print(f"{r['model']:<20} {r['version']:>3} {r['signature']:<18} {r['batch']:>5} {r['support']:>7} "
              f"{r['inner_steps'] or 0:>5} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['load_s']:>7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        info = {"tensorflow": tf.__version__, "cpus": os.cpu_count(), "calls": calls, "base": None if tmp else base}
        args.json.write_text(json.dumps({"environment": info, "results": rows}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
