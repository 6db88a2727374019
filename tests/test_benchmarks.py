"""Every benchmark script runs in its quick mode, prints its table and writes valid JSON (no timing checks)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

BENCHMARKS = REPO / "benchmarks"

# script, quick-mode arguments, a piece of the printed table, the JSON's top-level keys and its list of rows
CASES = [
    ("bench_meta_step.py", ["--quick", "--no-torch", "--configs", "sinusoid", "--task-execution", "vectorized"],
     "median ms", {"meta", "rows"}, "rows"),
    ("bench_memory.py", ["--quick"], "peak RSS", {"meta", "rows"}, "rows"),
    ("bench_episodes.py", ["--quick"], "episodes/s", {"data", "results"}, "results"),
    ("bench_serving.py", ["--quick", "--demo"], "p50 ms", {"environment", "results"}, "results"),
    ("bench_trpo_update.py", ["--quick", "--no-torch"], "median ms", {"meta", "rows"}, "rows"),
    ("bench_maml_plus_plus.py", ["--quick"], "held-out MSE", {"meta", "rows"}, "rows"),
    ("bench_episode_lengths.py", ["--quick"], "mean length", {"meta", "rows"}, "rows"),
]
# Not run here: bench_rl.py (meta-RL; its quick mode starts environment worker processes and writes no JSON).
NOT_RUN = {"bench_rl.py"}


def test_every_benchmark_is_covered():
    scripts = {p.name for p in BENCHMARKS.glob("bench_*.py")}
    assert scripts - NOT_RUN <= {case[0] for case in CASES}


@pytest.mark.parametrize("script, args, table, keys, rows", CASES, ids=[c[0] for c in CASES])
def test_benchmark_quick_mode_runs(script, args, table, keys, rows, tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert table in proc.stdout
    result = json.loads(out.read_text())
    assert keys <= set(result)
    assert len(result[rows]) >= 2
    figures = list(_numbers(result[rows]))
    assert figures and all(math.isfinite(x) for x in figures), figures  # measured, not NaN or ∞


def _numbers(value):
    """Every number in a JSON value (booleans are not figures)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)


def _fake_run(workdir: pathlib.Path, accuracies: dict[str, list[float]], steps_per_epoch: int) -> None:
    """A run directory as training leaves it: config.json and Keras-style epoch scalars per split."""
    import tensorflow as tf

    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"steps_per_epoch": steps_per_epoch}))
    for split, values in accuracies.items():
        writer = tf.summary.create_file_writer(str(workdir / "logs" / split))
        with writer.as_default():
            for epoch, value in enumerate(values):
                tf.summary.scalar("epoch_accuracy", value, step=epoch)
        writer.close()


def test_learning_curve_extends_from_its_saved_points_without_the_old_run(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import plot_learning_curve as plot
    finally:
        sys.path.remove(str(BENCHMARKS))
    _fake_run(tmp_path / "first", {"train": [0.5, 0.6], "validation": [0.4, 0.55]}, steps_per_epoch=100)
    _fake_run(tmp_path / "second", {"validation": [0.7]}, steps_per_epoch=50)
    data = tmp_path / "curve.json"
    plot.main([str(tmp_path / "first"), "--out", str(tmp_path / "a.png"), "--data", str(data)])
    saved = json.loads(data.read_text())["curves"]
    assert [(c["split"], c["meta_steps"]) for c in saved] == [("train", [100, 200]), ("validation", [100, 200])]
    assert saved[1]["accuracy"] == pytest.approx([0.4, 0.55])

    import shutil

    shutil.rmtree(tmp_path / "first")  # the earlier run is gone; its points are not
    plot.main([str(data), str(tmp_path / "second"), "--out", str(tmp_path / "b.png"), "--data", str(data)])
    extended = json.loads(data.read_text())["curves"]
    assert extended[:2] == saved
    assert (extended[2]["run"], extended[2]["meta_steps"], extended[2]["accuracy"]) == ("second", [50], pytest.approx([0.7]))
    assert (tmp_path / "b.png").stat().st_size > 1000
    _fake_run(tmp_path / "empty", {}, steps_per_epoch=100)
    with pytest.raises(SystemExit) as exit_:  # nothing logged: a usage error, not an empty picture
        plot.main([str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")])
    assert exit_.value.code == 2 and "no accuracy logged in" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
