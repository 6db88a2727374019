"""The Omniglot scripts' data and batch-norm flags reach the library."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

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
