"""The Omniglot scripts' data and batch-norm flags reach the library."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
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
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "eval_omniglot.py: error: Omniglot" in result.stderr and str(tmp_path / "empty") in result.stderr
    assert "download=False" in result.stderr and "--data-dir DIR" in result.stderr and "--manual-dir" in result.stderr
    assert not out.exists()


def test_maml_plus_plus_settings_reach_the_meta_learner(tmp_path):
    preset = omniglot.PRESETS["20way1shot"]
    maml = omniglot.build_meta_learner(dataclasses.replace(preset, learn_inner_lr="per_step", multi_step_loss=500))
    assert (maml.learn_inner_lr, maml.multi_step_loss) == ("per_step", 500)
    assert all(lr.shape == (preset.inner_steps,) for lr in maml.inner_lrs)
    plain = omniglot.build_meta_learner(preset)
    assert (plain.learn_inner_lr, plain.multi_step_loss, plain.per_step_batch_norm) == (False, 0, False)
    per_step_bn = omniglot.build_meta_learner(dataclasses.replace(preset, per_step_batch_norm=True))
    copies = [w for w in per_step_bn.batch_norm_step_weights if w is not None]
    assert len(copies) == 8 and all(w.shape == (preset.inner_steps, 64) for w in copies)  # γ, β of 4 blocks
    legacy = dataclasses.asdict(preset)
    for added in ("learn_inner_lr", "multi_step_loss", "first_order_until", "cosine_meta_lr", "per_step_batch_norm"):
        del legacy[added]  # runs from before the settings existed
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert omniglot.config_from_workdir(str(tmp_path)) == preset


def test_cosine_meta_lr_anneals_adam_to_a_hundredth_over_its_own_horizon():
    config = dataclasses.replace(omniglot.PRESETS["5way1shot"], meta_lr=2e-3, cosine_meta_lr=1000)
    optimizer = omniglot.build_meta_learner(config).optimizer
    for step, expected in ((0, 2e-3), (500, 2e-3 * (0.01 + 0.99 * 0.5)), (1000, 2e-5), (5000, 2e-5)):
        optimizer.iterations.assign(step)
        np.testing.assert_allclose(float(optimizer.learning_rate), expected, rtol=1e-5)
    constant = omniglot.build_meta_learner(omniglot.PRESETS["5way1shot"]).optimizer
    constant.iterations.assign(5000)
    np.testing.assert_allclose(float(constant.learning_rate), 1e-3, rtol=1e-6)


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
    assert omniglot.config_for_run(None, {"meta_steps": 8000}, workdir)[0] == resumed  # no --preset: the run's
    assert omniglot.config_for_run(None, {}, str(tmp_path / "new"))[0] == omniglot.PRESETS["5way1shot"]
    for preset, overrides, says in [("5way1shot", {}, "ways: asked 5, run has 20"),
                                    ("20way1shot", {"batch_norm": "running"}, "batch_norm: asked 'running', run has 'transductive'"),
                                    ("20way1shot", {"steps_per_epoch": 200}, "steps_per_epoch: asked 200, run has 100")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            omniglot.config_for_run(preset, overrides, workdir)


def test_train_script_flags_reach_the_run_config(tmp_path, monkeypatch, capsys):
    """``train_omniglot.py``'s flags become the run's config (and its data flags reach the loader), and a
    rerun with a disagreeing flag stops with the argparse error before loading data or training."""
    import runpy

    from tf_maml import performance

    seen = {}
    monkeypatch.setattr(performance, "set_graph_optimization", lambda level: seen.setdefault("graph", level))
    monkeypatch.setattr(performance, "run_tasks_in_parallel", lambda: seen.setdefault("threads", True))
    monkeypatch.setattr(omniglot, "load_classes", lambda args, split, parser: seen.update(split=split, args=args) or "DATA")

    def fake_train(config, workdir, data, verbose, init_from, keep_best):
        omniglot.training.save_config(config, workdir)
        seen.update(config=config, workdir=workdir, data=data, init_from=init_from, keep_best=keep_best)
        return "MAML"

    monkeypatch.setattr(omniglot, "train", fake_train)
    monkeypatch.setattr(omniglot, "evaluate", lambda maml, config, data, tasks, seed: {"tasks": tasks})
    workdir = tmp_path / "run"
    argv = ["train_omniglot.py", "--preset", "20way5shot", "--workdir", str(workdir), "--meta-steps", "300",
            "--steps-per-epoch", "50", "--split", "tfds", "--first-order", "--batch-norm", "running",
            "--offline", "--data-dir", str(tmp_path / "data"), "--eval-tasks", "7", "--graph-optimization", "off",
            "--learn-inner-lr", "per_step", "--multi-step-loss", "1000", "--first-order-until", "200",
            "--cosine-meta-lr", "300", "--per-step-bn", "--keep-best", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(ROOT, "scripts", "train_omniglot.py"), run_name="__main__")
    c = seen["config"]
    assert (c.ways, c.shots, c.meta_steps, c.steps_per_epoch, c.split, c.first_order, c.batch_norm) == (
        20, 5, 300, 50, "tfds", True, "running")
    assert (c.learn_inner_lr, c.multi_step_loss, c.first_order_until, c.cosine_meta_lr, c.per_step_batch_norm) == (
        "per_step", 1000, 200, 300, True)
    assert seen["split"] == "tfds" and seen["args"].offline and seen["args"].data_dir == str(tmp_path / "data")
    assert seen["graph"] == "off" and seen["threads"] and seen["data"] == "DATA" and seen["init_from"] is None
    assert seen["keep_best"] == 3
    assert json.loads((workdir / "eval.json").read_text()) == {"tasks": 7}

    seen.clear()
    monkeypatch.setattr(sys, "argv", ["train_omniglot.py", "--preset", "20way5shot", "--workdir", str(workdir),
                                      "--batch-norm", "transductive"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, "scripts", "train_omniglot.py"), run_name="__main__")
    assert exit_info.value.code == 2 and "config" not in seen and "split" not in seen
    assert "batch_norm: asked 'transductive', run has 'running'" in capsys.readouterr().err
