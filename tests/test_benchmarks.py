"""Every benchmark script runs in its quick mode, prints its table and writes valid JSON (no timing checks)."""

import pathlib
import json
import os
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
