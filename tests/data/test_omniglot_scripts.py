"""The Omniglot scripts' data and batch-norm flags reach the library."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from tf_maml.recipes import omniglot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_offline_script_without_data_says_where_it_looked_and_writes_nothing(tmp_path):
    out = tmp_path / "acc.json"
    env = {**os.environ, "TF_MAML_CACHE_DIR": str(tmp_path / "cache"), "TF_MAML_DATA_DIR": ""}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "eval_omniglot.py"), "--saved-model",
         os.path.join(ROOT, "saved_models", "omniglot_5way1shot"), "--offline", "--data-dir", str(tmp_path / "empty"),
         "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode != 0
    assert "OmniglotNotFoundError" in result.stderr and str(tmp_path / "empty") in result.stderr
    assert "manual_dir" in result.stderr and "download=False" in result.stderr
    assert not out.exists()


def test_batch_norm_mode_is_part_of_the_config(tmp_path):
    running = dataclasses.replace(omniglot.PRESETS["5way1shot"], batch_norm="running")
    assert omniglot.build_meta_learner(running).batch_norm == "running"
    assert omniglot.build_meta_learner(omniglot.PRESETS["5way1shot"]).batch_norm == "transductive"
    legacy = dataclasses.asdict(omniglot.PRESETS["20way1shot"])
    del legacy["batch_norm"]  # config.json of runs from before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert omniglot.config_from_workdir(str(tmp_path)).batch_norm == "transductive"


def test_rerunning_the_command_resumes_with_the_runs_own_settings(tmp_path):
    config, workdir = omniglot.config_for_run("20way1shot", {"meta_steps": 400}, str(tmp_path / "run"))
    assert workdir == str(tmp_path / "run") and config.ways == 20 and config.meta_steps == 400
    assert omniglot.config_for_run("5way5shot", {})[1] == os.path.join("runs", "omniglot_5way5shot")
    os.makedirs(workdir)
    started = dataclasses.replace(config, steps_per_epoch=100)  # the preset has changed since the run began
    (tmp_path / "run" / "config.json").write_text(json.dumps(dataclasses.asdict(started)))
    resumed, _ = omniglot.config_for_run("20way1shot", {"meta_steps": 8000}, workdir)
    assert resumed == dataclasses.replace(started, meta_steps=8000)
    for preset, overrides, says in [("5way1shot", {}, "ways: asked 5, run has 20"),
                                    ("20way1shot", {"batch_norm": "running"}, "batch_norm: asked 'running', run has 'transductive'"),
                                    ("20way1shot", {"steps_per_epoch": 200}, "steps_per_epoch: asked 200, run has 100")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            omniglot.config_for_run(preset, overrides, workdir)
