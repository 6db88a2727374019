"""End-to-end: meta-training learns, resumes exactly, and the MuJoCo families run."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_maml.rl.evaluation import adaptation_returns
from tf_maml.rl.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from tf_maml.rl.policy import policy_params
from tf_maml.rl.presets import preset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_navigation_meta_training_learns_and_resumes_exactly(tmp_path):
    config = preset("navigation2d", meta_batch_size=8, n_traj=8, num_envs=64, seed=1)
    logdir = str(tmp_path / "run")
    learner = MAMLTRPO(config, logdir)
    eval_tasks = learner.sampler.sample_tasks(8, seed=999)

    def evaluate(params):
        r = adaptation_returns(learner.model, params, learner.sampler, eval_tasks, 8, config.fast_lr, steps=1, seed=5)
        return r.mean(axis=1)

    before = evaluate(policy_params(learner.model))
    history = learner.train(6)
    after = evaluate(policy_params(learner.model))
    assert all(m["kl"] <= config.max_kl + 1e-6 for m in history)
    assert sum(m["line_search_accepted"] for m in history) >= 4
    # learning happens: the post-adaptation return of the meta-trained policy beats both its own
    # pre-adaptation return and the post-adaptation return of the initialisation
    assert after[1] > after[0] + 1.0
    assert after[1] > before[1] + 5.0

    # exact resume: a fresh learner restored from the iteration-6 checkpoint takes the same 7th step
    resumed = MAMLTRPO.from_logdir(logdir)
    assert int(resumed.iteration.numpy()) == 6
    np.testing.assert_array_equal(resumed.theta().numpy(), learner.theta().numpy())
    m_a = learner.step()
    m_b = resumed.step()
    assert m_a["return_pre"] == m_b["return_pre"] and m_a["return_post"] == m_b["return_post"]
    np.testing.assert_allclose(resumed.theta().numpy(), learner.theta().numpy(), rtol=0, atol=1e-6)
    assert os.path.exists(os.path.join(logdir, "tensorboard"))
    lines = open(os.path.join(logdir, "metrics.jsonl")).read().splitlines()
    assert json.loads(lines[-1])["iteration"] == 7
    learner.close()
    resumed.close()


@pytest.mark.parametrize("family", ["halfcheetah-vel", "ant-dir"])
def test_mujoco_meta_iteration_smoke(tmp_path, family):
    config = preset(family, meta_batch_size=2, n_traj=2, num_envs=4)
    learner = MAMLTRPO(config, str(tmp_path))
    metrics = learner.step()
    assert np.isfinite(metrics["return_pre"]) and np.isfinite(metrics["return_post"])
    assert metrics["kl"] <= config.max_kl + 1e-6
    learner.close()


def test_benchmark_quick_runs():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_rl.py"), "--quick"],
                         check=True, capture_output=True, text=True, env=env, timeout=150).stdout
    assert "env_steps_per_s" in out and "seconds_per_meta_iteration" in out


def test_runs_from_before_action_scaling_are_refused_clearly():
    config = json.loads(MAMLTRPOConfig().to_json())
    assert MAMLTRPOConfig.from_json(json.dumps(config)).action_scaling == "unit"
    del config["action_scaling"]  # what a run written before the change has
    with pytest.raises(ValueError, match="Retrain"):
        MAMLTRPOConfig.from_json(json.dumps(config))
