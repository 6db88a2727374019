"""MAML-TRPO settings are checked when made, so train_rl.py stops before writing a run's config.json.

Unchecked, ``--num-envs 0`` failed after the config was saved (locking the logdir), ``--meta-batch-size 0``
blamed the rewards, ``--fast-lr -1`` trained by gradient ascent and ``--iterations -5`` exited 0.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pytest

from tf_maml.rl.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from tf_maml.rl.presets import preset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_rl_main():
    spec = importlib.util.spec_from_file_location("train_rl", os.path.join(ROOT, "scripts", "train_rl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("field, value, must", [
    ("meta_batch_size", 0, "an integer >= 1"), ("n_traj", 0, "an integer >= 1"),
    ("fast_lr", -1.0, "a finite number > 0"), ("fast_lr", 0.0, "a finite number > 0"),
    ("fast_lr", float("nan"), "a finite number > 0"), ("fast_lr", float("inf"), "a finite number > 0"),
    ("inner_steps", -1, "an integer >= 0"), ("num_envs", 0, "an integer >= 1"),
    ("max_kl", 0.0, "a finite number > 0"), ("cg_iters", 0, "an integer >= 1"), ("ls_steps", 0, "an integer >= 1"),
    ("ls_ratio", 0.0, "a number in (0, 1)"), ("ls_ratio", 1.0, "a number in (0, 1)"),
    ("gamma", 1.5, "a number in [0, 1]"), ("gamma", -0.1, "a number in [0, 1]"),
    ("gae_lambda", 1.1, "a number in [0, 1]"), ("hidden", (100, 0), "a list, each item an integer >= 1"),
    ("seed", -1, "an integer >= 0"), ("meta_batch_size", 2.5, "an integer >= 1"),
])
def test_each_bad_setting_is_named_with_what_it_must_be(field, value, must):
    with pytest.raises(ValueError, match="Invalid MAMLTRPOConfig") as err:
        preset("navigation2d", **{field: value})
    assert f"{field} = {value!r} (must be {must})" in str(err.value)


def test_the_limits_themselves_are_valid():
    config = preset("navigation2d", inner_steps=0, gamma=1.0, gae_lambda=0.0, cg_damping=0.0, seed=0)
    assert config.inner_steps == 0 and config.hidden == (100, 100)


@pytest.mark.parametrize("flags, says", [
    (["--num-envs", "0"], "num_envs = 0 (must be an integer >= 1)"),
    (["--meta-batch-size", "0", "--fast-lr", "-1", "--inner-steps", "-1"],
     "meta_batch_size = 0 (must be an integer >= 1); fast_lr = -1.0 (must be a finite number > 0); "
     "inner_steps = -1 (must be an integer >= 0)"),
    (["--iterations", "-5"], "argument --iterations: must be an integer >= 1, got -5"),
])
def test_train_script_stops_before_writing_the_run(tmp_path, capsys, flags, says):
    logdir = tmp_path / "run"
    args = ["--env", "navigation2d", "--iterations", "1", "--logdir", str(logdir), *flags]
    with pytest.raises(SystemExit) as exit_info:
        train_rl_main()(args)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert not logdir.exists()


def test_saved_settings_are_checked_on_load_naming_the_file(tmp_path, capsys):
    """A run saved unchecked by an older version, or a logdir of another kind of run, is refused clearly
    (not as a run from before action scaling, and not by a crash once training starts)."""
    bad, other = tmp_path / "bad", tmp_path / "other"
    for path, values in ((bad, {**dataclasses.asdict(MAMLTRPOConfig()), "num_envs": 0}),
                         (other, {"ways": 5, "shots": 1, "meta_steps": 200})):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(values))
    refused = f"{bad / 'config.json'} holds settings this version refuses: num_envs = 0 (must be an integer >= 1)"
    with pytest.raises(ValueError) as err:
        MAMLTRPO.from_logdir(str(bad))  # said first: training on to a checkpoint would not help
    assert refused in str(err.value) and "start a new run in another directory" in str(err.value)
    with pytest.raises(SystemExit):
        train_rl_main()(["--env", "navigation2d", "--iterations", "1", "--logdir", str(bad)])
    assert refused in capsys.readouterr().err
    with pytest.raises(ValueError, match="another kind of run or model, not of a MAML-TRPO run") as err:
        MAMLTRPOConfig.from_json((other / "config.json").read_text())
    assert "Retrain" not in str(err.value)
