"""Bad settings stop the Omniglot and sinusoid scripts before anything is written, saying what to change.

An unchecked value used to reach the run's config.json first, which locked the directory (every rerun was
refused as "other settings"), or trained nothing and still reported success; a run directory of another
kind, or a missing one, gave a raw traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import runpy
import subprocess
import sys

import pytest

from tf_maml import performance, training
from tf_maml.recipes import omniglot, sinusoid

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def script_error(monkeypatch, capsys):
    """Run ``scripts/<name>.py`` in-process; it must stop with argparse's error (exit 2): its message."""
    monkeypatch.setattr(performance, "set_graph_optimization", lambda level: None)  # no global TF state
    monkeypatch.setattr(performance, "run_tasks_in_parallel", lambda: None)

    def run(name: str, *args: str) -> str:
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name="__main__")
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    return run


def run_subprocess(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("overrides, says", [
    ({"steps_per_epoch": 0}, "steps_per_epoch = 0 (must be an integer >= 1)"),
    ({"meta_steps": -200}, "meta_steps = -200 (must be an integer >= 1)"),
    ({"meta_steps": 0}, "meta_steps = 0 (must be an integer >= 1)"),
    ({"meta_steps": 150}, "meta_steps (150) must be a multiple of steps_per_epoch (200)"),
    ({"queries": 0}, "queries = 0 (must be None or an integer >= 1)"),
    ({"split": "train"}, "split = 'train' (must be one of 'paper', 'tfds')"),
    ({"inner_lr": float("nan")}, "inner_lr = nan (must be a finite number > 0)"),
    ({"batch_norm": "none"}, "batch_norm = 'none' (must be one of 'transductive', 'running')"),
    ({"learn_inner_lr": "per_layer"}, "learn_inner_lr = 'per_layer' (must be False, True (Meta-SGD) or 'per_step'"),
    ({"multi_step_loss": -1}, "multi_step_loss = -1 (must be an integer >= 0)"),
    ({"first_order_until": 1.5}, "first_order_until = 1.5 (must be an integer >= 0)"),
    ({"cosine_meta_lr": -3}, "cosine_meta_lr = -3 (must be an integer >= 0)"),
    ({"cosine_meta_lr_from": 100}, "cosine_meta_lr_from is set but cosine_meta_lr is 0"),
    ({"learn_inner_lr": "per_step", "inner_steps": 0}, "learn_inner_lr='per_step' learns one rate per inner step"),
    ({"per_step_batch_norm": "yes"}, "per_step_batch_norm = 'yes' (must be True or False)"),
    ({"per_step_batch_norm": True, "inner_steps": 0}, "per_step_batch_norm learns one copy of γ, β per inner step"),
])
def test_omniglot_settings_are_checked_before_the_run_directory_exists(tmp_path, overrides, says):
    with pytest.raises(ValueError, match="Invalid OmniglotConfig") as err:
        omniglot.config_for_run("5way1shot", overrides, str(tmp_path / "run"))
    assert says in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, says", [
    ({"shots": 0}, "shots = 0 (must be an integer >= 1)"),
    ({"meta_steps": 0}, "meta_steps = 0 (must be an integer >= 1)"),
    ({"meta_steps": -5}, "meta_steps = -5 (must be an integer >= 1)"),
    ({"meta_steps": 150}, "meta_steps (150) must be a multiple of steps_per_epoch (100)"),
    ({"eval_steps": ()}, "eval_steps = () (must be a non-empty list, each item an integer >= 0)"),
    ({"seed": -1}, "seed = -1 (must be an integer >= 0)"),
])
def test_sinusoid_settings_are_checked_before_the_run_directory_exists(tmp_path, overrides, says):
    with pytest.raises(ValueError, match="Invalid SinusoidConfig") as err:
        sinusoid.config_for_run("smoke", overrides, str(tmp_path / "run"))
    assert says in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_refused_flag_leaves_the_directory_free_for_the_next_run(tmp_path):
    workdir = tmp_path / "run"
    result = run_subprocess("train_omniglot.py", "--workdir", str(workdir), "--steps-per-epoch", "0", "--offline")
    assert result.returncode == 2
    assert "steps_per_epoch = 0 (must be an integer >= 1)" in result.stderr and "--steps-per-epoch" in result.stderr
    assert not workdir.exists()
    assert omniglot.config_for_run("5way1shot", {}, str(workdir))[0] == omniglot.PRESETS["5way1shot"]


def test_a_run_resumes_with_its_own_command_whatever_the_preset_s_meta_steps(tmp_path):
    """Flags of a run going on are checked against its settings: an epoch of 7 steps does not divide the
    preset's 60,000 meta-steps, which this run never had."""
    workdir = str(tmp_path / "run")
    asked = {"meta_steps": 70, "steps_per_epoch": 7}
    config, _ = omniglot.config_for_run(None, asked, workdir)
    training.save_config(config, workdir)
    assert omniglot.config_for_run(None, asked, workdir)[0] == config
    assert omniglot.config_for_run(None, {"meta_steps": 140}, workdir)[0].meta_steps == 140
    with pytest.raises(ValueError, match=r"meta_steps \(75\) must be a multiple of steps_per_epoch \(7\)"):
        omniglot.config_for_run(None, {"meta_steps": 75}, workdir)


def test_sinusoid_without_meta_steps_stops_instead_of_pretraining_forever(tmp_path):
    result = run_subprocess("train_sinusoid.py", "--preset", "smoke", "--workdir", str(tmp_path / "run"),
                            "--meta-steps", "0")
    assert result.returncode == 2 and "meta_steps = 0 (must be an integer >= 1)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_meta_steps_off_the_epoch_grid_are_an_argparse_error_in_both_scripts(tmp_path, script_error):
    says = "meta_steps (150) must be a multiple of steps_per_epoch (100)"
    assert says in script_error("train_sinusoid", "--preset", "smoke", "--workdir", str(tmp_path / "s"),
                                "--meta-steps", "150")
    assert says in script_error("train_omniglot", "--workdir", str(tmp_path / "o"), "--meta-steps", "150",
                                "--steps-per-epoch", "100")
    assert not any(tmp_path.iterdir())


def test_a_warm_restart_without_an_export_to_continue_is_an_argparse_error(tmp_path, script_error):
    says = "warm restart begins a schedule (--cosine-meta-lr) again at the step of the export a run continues"
    assert says in script_error("train_omniglot", "--workdir", str(tmp_path / "o"), "--cosine-meta-lr", "1000",
                                "--warm-restart")
    assert "argument --meta-lr: must be a finite number > 0, got 0" in script_error(
        "train_omniglot", "--workdir", str(tmp_path / "o"), "--meta-lr", "0")
    assert not any(tmp_path.iterdir())
    assert omniglot.config_for_run(None, {"meta_lr": 3e-4}, str(tmp_path / "new"))[0].meta_lr == 3e-4  # a new run's


def test_settings_saved_unchecked_are_refused_on_load_naming_the_file(tmp_path, script_error):
    """Runs written before the checks may hold a bad value: loading says which and how to get going again."""
    legacy = {**dataclasses.asdict(omniglot.PRESETS["5way1shot"]), "steps_per_epoch": 0}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    says = (f"{tmp_path / 'config.json'} holds settings this version refuses: "
            "steps_per_epoch = 0 (must be an integer >= 1)")
    with pytest.raises(ValueError) as err:
        omniglot.config_for_run("5way1shot", {}, str(tmp_path))
    assert says in str(err.value) and "start a new run in another directory" in str(err.value)
    assert says in script_error("train_omniglot", "--workdir", str(tmp_path))


def test_a_config_changed_after_it_was_made_is_not_saved(tmp_path):
    config = dataclasses.replace(sinusoid.PRESETS["smoke"])
    config.shots = 0
    with pytest.raises(ValueError, match=r"shots = 0"):
        training.save_config(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_another_kind_of_run_or_export_is_named_as_such(tmp_path, script_error):
    sinusoid_run = tmp_path / "sinusoid_run"
    training.save_config(sinusoid.PRESETS["smoke"], str(sinusoid_run))
    not_omniglot = "holds the settings of another kind of run or model, not of an Omniglot run or export"
    assert not_omniglot in script_error("eval_omniglot", "--workdir", str(sinusoid_run))
    assert not_omniglot in script_error("train_omniglot", "--workdir", str(sinusoid_run))
    err = script_error("eval_omniglot", "--saved-model", str(ROOT / "saved_models" / "sinusoid"))
    assert "the metadata of" in err and not_omniglot in err
    omniglot_run = tmp_path / "omniglot_run"
    training.save_config(omniglot.PRESETS["5way1shot"], str(omniglot_run))
    assert "not of a sinusoid run or export" in script_error("train_sinusoid", "--workdir", str(omniglot_run))


def test_a_missing_run_directory_is_named(tmp_path, script_error):
    missing = tmp_path / "nowhere"
    says = f"{missing / 'config.json'} not found: {missing} is not the directory of an Omniglot run or export"
    assert says in script_error("eval_omniglot", "--workdir", str(missing))
    assert says in script_error("export_omniglot", "--workdir", str(missing))


def test_task_counts_are_checked_as_the_flags_they_are(tmp_path, script_error):
    model = str(ROOT / "saved_models" / "omniglot_5way1shot")
    assert "argument --tasks: must be an integer >= 1, got -3" in script_error("eval_omniglot", "--saved-model", model,
                                                                                "--tasks", "-3")
    assert "argument --steps: must be an integer >= 0, got -1" in script_error("eval_omniglot", "--saved-model", model,
                                                                                "--steps", "-1")
    assert "argument --shots: must be an integer >= 1, got 0" in script_error("eval_omniglot", "--saved-model", model,
                                                                               "--shots", "0")
    assert "argument --classes: invalid choice: 'train'" in script_error("eval_omniglot", "--saved-model", model,
                                                                          "--classes", "train")
    assert "--best picks checkpoints of training directories: give them with --workdir" in script_error(
        "eval_omniglot", "--saved-model", model, "--best", "2")
    omniglot_run = tmp_path / "unvalidated"  # settings only: trained without keep_best, or not validated yet
    training.save_config(omniglot.PRESETS["5way1shot"], str(omniglot_run))
    assert "2 best checkpoints asked of" in script_error("eval_omniglot", "--workdir", str(omniglot_run), "--best", "2")
    assert "1 best checkpoint asked of" in script_error("export_omniglot", "--workdir", str(omniglot_run), "--best")
    assert "argument --steps: must be an integer >= 1, got 0" in script_error(
        "export_omniglot", "--workdir", str(omniglot_run), "--steps", "0")
    with pytest.raises(ValueError, match="eval_inner_steps= sets the test-time steps of a training directory"):
        omniglot.load_for_evaluation(saved_model=model, eval_inner_steps=3)
    assert "argument --keep-best: must be an integer >= 0, got -1" in script_error(
        "train_omniglot", "--workdir", str(tmp_path / "run"), "--keep-best", "-1")
    # Checked before the data is loaded: this test has no Omniglot copy to reach.
    assert "need 22 drawings of each character; Omniglot has 20" in script_error(
        "eval_omniglot", "--saved-model", model, "--shots", "11", "--offline", "--data-dir", str(tmp_path / "none"))
    # 0 evaluation tasks made eval.json hold NaN (not JSON); not evaluating is not an option of this script.
    assert "argument --eval-tasks: must be an integer >= 1, got 0" in script_error(
        "train_omniglot", "--workdir", str(tmp_path / "run"), "--eval-tasks", "0")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"tasks must be an integer >= 1, got 0"):
        omniglot.evaluate(None, omniglot.PRESETS["5way1shot"], None, 0, seed=0)


def test_fit_resumable_refuses_an_empty_epoch_before_touching_the_directory(tmp_path):
    with pytest.raises(ValueError, match=r"steps_per_epoch must be an integer >= 1, got 0"):
        training.fit_resumable(None, None, 200, 0, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
