import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_maml
from tf_maml.rl import export as rl_export
from tf_maml.rl.policy import build_policy, distribution, policy_params
from tf_maml.rl.sampler import Sampler
from tf_maml.serving import next_version

LOADER = """
import json, sys
import numpy as np, tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
obs = np.load(sys.argv[2])
mean = m.signatures["serving_default"](observations=tf.constant(obs))["actions"].numpy()
sample = m.signatures["sample"](observations=tf.constant(obs))["actions"].numpy()
np.save(sys.argv[3], np.stack([mean, sample]))
"""


def test_export_adapted_policy_roundtrip_in_fresh_process(tmp_path):
    model = build_policy(2, 2, seed=3)
    sampler = Sampler("tf_maml/Navigation2D-v0", model, num_envs=8)
    task = sampler.sample_tasks(1, seed=9)[0]
    base = str(tmp_path / "models")
    path, adapted = rl_export.export_adapted_policy(
        model, policy_params(model), sampler, task, base, "nav", fast_lr=0.5, steps=1, n_traj=8
    )
    assert path == os.path.join(base, "nav", "1")
    assert not np.allclose(adapted[0].numpy(), model.trainable_variables[0].numpy())  # it did adapt
    with open(os.path.join(path, "assets", "tf_maml.json")) as f:
        meta = json.load(f)
    assert meta["task"] == task and meta["adaptation"]["steps"] == 1 and meta["action_dim"] == 2
    assert (meta["tf_maml_version"], meta["tensorflow_version"], meta["keras_version"]) == (
        tf_maml.__version__, tf.__version__, keras.__version__) and meta["exported_at"]  # traceable, as every export

    obs = np.random.default_rng(0).uniform(-0.5, 0.5, size=(16, 2)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", LOADER, path, str(tmp_path / "obs.npy"), str(tmp_path / "out.npy")],
                   check=True, env=env, timeout=120)
    served_mean, served_sample = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(meta["action_bounds"], [[-0.1, -0.1], [0.1, 0.1]], rtol=1e-6)
    mean, _ = distribution(model, adapted, obs)
    in_env_units = np.clip(0.1 * mean.numpy(), -0.1, 0.1)  # the policy's [-1, 1] is the env's ±0.1
    assert np.abs(served_mean - in_env_units).max() <= 1e-6
    assert np.abs(served_sample).max() <= 0.1 + 1e-7  # sampled, then rescaled and clipped like training
    assert np.abs(served_sample - served_mean).max() > 1e-3  # a real sample
    sampler.close()


def test_versions_increment_and_failures_leave_nothing(tmp_path, monkeypatch):
    model = build_policy(2, 2, seed=0)
    base = str(tmp_path)
    p1 = rl_export.export_policy(model, policy_params(model), base, "m", {"note": "a"}, action_bounds=None)
    p2 = rl_export.export_policy(model, policy_params(model), base, "m", {"note": "b"}, action_bounds=None)
    assert [os.path.basename(p1), os.path.basename(p2)] == ["1", "2"]
    os.makedirs(os.path.join(base, "m", "7"))  # someone else's version: we continue after it
    assert next_version(os.path.join(base, "m")) == 8

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        rl_export.export_policy(model, policy_params(model), base, "m", action_bounds=None)
    assert sorted(os.listdir(os.path.join(base, "m"))) == ["1", "2", "7"]


def test_cli_exports_a_policy_adapted_to_a_given_task(tmp_path, capsys):
    from tf_maml.rl.maml_trpo import MAMLTRPO
    from tf_maml.rl.presets import preset

    logdir = str(tmp_path / "run")
    learner = MAMLTRPO(preset("navigation2d", meta_batch_size=2, n_traj=2, num_envs=8), logdir)
    learner.save()
    learner.close()
    common = ["--logdir", logdir, "--base", str(tmp_path / "models"), "--name", "nav", "--n-traj", "4"]
    rl_export.main([*common, "--task", '{"goal": [0.3, -0.2]}'])
    path = capsys.readouterr().out.strip().splitlines()[-1]
    with open(os.path.join(path, "assets", "tf_maml.json")) as f:
        assert json.load(f)["task"] == {"goal": [0.3, -0.2]}
    for bad, says in [('{"velocity": 1.5}', r"not a task of tf_maml/Navigation2D-v0.*\{\"goal\": \["),
                      ("goal=0.3", "task must be JSON"),
                      ('{"goal": [0.1, 0.2, 0.3]}', "goal must have 2 finite coordinates")]:
        with pytest.raises(SystemExit):
            rl_export.main([*common, "--task", bad])
        assert re.search(says, capsys.readouterr().err), bad
    for flags, says in [(["--steps", "-1"], "--steps: must be an integer >= 0"),
                        (["--n-traj", "0"], "--n-traj: must be an integer >= 1"),
                        (["--logdir", str(tmp_path / "none")], "not a train_rl.py run directory")]:
        with pytest.raises(SystemExit) as exit_info:
            rl_export.main([*common, *flags])
        assert exit_info.value.code == 2 and re.search(says, capsys.readouterr().err), flags
    assert sorted(os.listdir(tmp_path / "models" / "nav")) == ["1"]  # failures exported nothing


def test_diverged_adaptation_exports_nothing(tmp_path):
    model = build_policy(2, 2, seed=0)
    sampler = Sampler("tf_maml/Navigation2D-v0", model, num_envs=4)
    with pytest.raises(FloatingPointError, match=r"non-finite policy parameters.*nothing was exported"):
        rl_export.export_adapted_policy(model, policy_params(model), sampler, {"goal": [0.3, 0.3]}, str(tmp_path),
                                        "nav", fast_lr=float("inf"), steps=1, n_traj=4)
    assert not os.path.exists(tmp_path / "nav") or not os.listdir(tmp_path / "nav")
    sampler.close()
