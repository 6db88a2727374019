"""Runs as the scripts drive them: resuming with the run's own settings, refusals, evaluation, continuing an export."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from tf_maml.rl.maml_trpo import MAMLTRPO
from tf_maml.rl.presets import preset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resuming_with_other_settings_is_refused(tmp_path, capsys, tiny_preset):
    train_rl = load_script("train_rl")
    logdir = str(tmp_path / "run")
    MAMLTRPO(tiny_preset(num_envs=8), logdir).close()
    for flags, says in [(["--env", "halfcheetah-dir"], r"env_id: asked 'tf_maml/HalfCheetahDir-v0', run has 'tf_maml/Navigation2D-v0'"),
                        (["--env", "navigation2d", "--meta-batch-size", "4"], r"meta_batch_size: asked 4, run has 2"),
                        (["--env", "navigation2d", "--sample-budget", "episodes"], r"sample_budget: asked 'episodes', run has 'steps'"),
                        # a step budget split over waves of fewer envs than episodes per task would hold other batches
                        (["--env", "navigation2d", "--meta-batch-size", "2", "--num-envs", "1"],
                         r"num_envs 8 → 1 would run 1 instead of 2 of a task's 2 episodes per wave, and so change what "
                         r"a batch holds\. Keep --num-envs 8, or pick one of at least 2\.")]:
        with pytest.raises(SystemExit):
            train_rl.main([*flags, "--iterations", "1", "--logdir", logdir])
        assert re.search(says, capsys.readouterr().err)
    train_rl.main(["--env", "navigation2d", "--meta-batch-size", "2", "--iterations", "1", "--logdir", logdir])
    assert "it    1" in capsys.readouterr().out
    # the vector-env kind is a speed choice, not a setting of the run: a resume may change it
    resumed = MAMLTRPO.for_run(preset("navigation2d", asynchronous=True), logdir, {"asynchronous": True})
    assert resumed.sampler.asynchronous and resumed.config.meta_batch_size == 2
    resumed.close()
    assert json.load(open(os.path.join(logdir, "config.json")))["asynchronous"] is None
    kept = MAMLTRPO.for_run(preset("navigation2d", asynchronous=True), logdir, {})  # not asked: the run's own
    assert not kept.sampler.asynchronous and kept.sampler.num_envs == 8
    kept.close()
    # so is the number of envs, while every wave still holds whole tasks
    more = MAMLTRPO.for_run(preset("navigation2d"), logdir, {"num_envs": 2})
    assert more.sampler.num_envs == 2 and int(more.iteration.numpy()) == 1
    more.close()


def test_unfinished_runs_are_not_evaluated_and_a_lost_iteration_is_logged_once(tmp_path, monkeypatch, tiny_preset):
    config = tiny_preset(seed=3)
    logdir = str(tmp_path / "run")
    learner = MAMLTRPO(config, logdir)
    # A run that crashed before its first checkpoint would otherwise evaluate as a random policy.
    with pytest.raises(FileNotFoundError, match="no checkpoint.*Train it first"):
        MAMLTRPO.from_logdir(logdir)
    with pytest.raises(FileNotFoundError, match="not a train_rl.py run"):
        MAMLTRPO.from_logdir(str(tmp_path / "elsewhere"))

    def crash():
        raise OSError("disk full")

    monkeypatch.setattr(learner, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        learner.train(1)
    assert not os.path.exists(os.path.join(logdir, "metrics.jsonl"))  # the unsaved iteration is not logged
    learner.close()
    resumed = MAMLTRPO(config, logdir)
    resumed.train(1)
    lines = [json.loads(l) for l in open(os.path.join(logdir, "metrics.jsonl"))]
    assert [m["iteration"] for m in lines] == [1]
    restored = MAMLTRPO.from_logdir(logdir)
    assert int(restored.iteration.numpy()) == 1
    restored.close()
    resumed.close()


def test_eval_script_reports_returns_and_refuses_a_pretrained_run_of_another_problem(tmp_path, capsys, tiny_preset):
    eval_rl = load_script("eval_rl")
    runs = {"maml": (100, 100), "pretrained": (100, 100), "other": (8,)}
    for name, hidden in runs.items():
        inner = 0 if name == "pretrained" else 1
        learner = MAMLTRPO(tiny_preset(hidden=hidden, inner_steps=inner), str(tmp_path / name))
        learner.train(1)
        learner.close()
    out, figure = tmp_path / "eval.json", tmp_path / "figures" / "eval.png"
    results = eval_rl.main(["--logdir", str(tmp_path / "maml"), "--pretrained-logdir", str(tmp_path / "pretrained"),
                            "--tasks", "2", "--steps", "1", "--no-random", "--json", str(out), "--plot", str(figure),
                            "--num-envs", "80"])
    assert results["n_traj"] == 40  # the paper's 4,000 steps per task at navigation's horizon of 100
    saved = json.loads(out.read_text())
    assert len(saved["returns"]) == 2 and len(saved["pretrained"]["returns"]) == 2 and saved["iteration"] == 1
    assert all(np.isfinite(saved["returns"])) and saved["returns"] == saved["maml"]["returns"]
    from matplotlib.image import imread

    assert imread(figure).shape[:2] == (420, 600)  # the Figure-5-style plot: 5 x 3.5 inches at 120 dpi
    capsys.readouterr()
    # Subprocess envs and their number are speed choices: the same episodes (to the policy's float32 round-off
    # between batch shapes), so the same returns. (The other calls take all 80 episodes of a sampling at once.)
    again = eval_rl.main(["--logdir", str(tmp_path / "maml"), "--tasks", "2", "--steps", "1", "--no-random",
                          "--vector-env", "async", "--num-envs", "8", "--progress"])
    np.testing.assert_allclose(again["returns"], results["returns"], rtol=1e-4)
    assert "sampling" in capsys.readouterr().err  # the progress bar
    # ... except that a step budget split over waves would change the sample
    with pytest.raises(SystemExit):
        eval_rl.main(["--logdir", str(tmp_path / "maml"), "--tasks", "2", "--n-traj", "4", "--no-random",
                      "--sample-budget", "steps", "--num-envs", "2"])
    assert "pass --num-envs of at least 4 (--n-traj)" in capsys.readouterr().err
    # A meta-policy export evaluates as its run does, where the run directory is not.
    from tf_maml.rl import export as rl_export

    rl_export.main(["--logdir", str(tmp_path / "maml"), "--base", str(tmp_path / "models"), "--name", "meta",
                    "--steps", "0"])
    shipped = eval_rl.main(["--export", str(tmp_path / "models" / "meta"), "--tasks", "2", "--steps", "1",
                            "--no-random", "--num-envs", "80"])
    np.testing.assert_allclose(shipped["returns"], results["returns"], rtol=1e-6)
    assert shipped["iteration"] == 1
    # A baseline adapts at its own rate when given one (the paper's code tuned them): the pretrained run then
    # evaluates as it would on its own at that rate.
    tuned = eval_rl.main(["--logdir", str(tmp_path / "maml"), "--pretrained-logdir", str(tmp_path / "pretrained"),
                          "--pretrained-fast-lr", "0.05", "--later-ratio", "0.1", "--tasks", "2", "--steps", "2",
                          "--no-random", "--num-envs", "80"])
    alone = eval_rl.main(["--logdir", str(tmp_path / "pretrained"), "--fast-lr", "0.05", "--later-lr", "0.005",
                          "--tasks", "2", "--steps", "2", "--no-random", "--num-envs", "80"])
    assert (tuned["pretrained"]["fast_lr"], tuned["pretrained"]["later_lr"]) == pytest.approx((0.05, 0.005))
    assert (tuned["maml"]["fast_lr"], tuned["maml"]["later_lr"]) == pytest.approx((0.5, 0.05))
    np.testing.assert_allclose(tuned["pretrained"]["returns"], alone["returns"], rtol=1e-6)
    np.testing.assert_allclose(tuned["maml"]["returns"][:2], results["returns"], rtol=1e-6)
    assert not np.allclose(tuned["pretrained"]["returns"][1], results["pretrained"]["returns"][1])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        eval_rl.main(["--logdir", str(tmp_path / "maml"), "--pretrained-fast-lr", "0.1"])
    assert "pass --pretrained-logdir too" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_rl.main(["--logdir", str(tmp_path / "maml"), "--random-fast-lr", "0.1", "--no-random"])
    assert "which --no-random leaves out" in capsys.readouterr().err
    # The paper's evaluation code sampled a step budget (rllab); the choice is recorded with the figures.
    budget = eval_rl.main(["--logdir", str(tmp_path / "maml"), "--tasks", "2", "--steps", "1", "--no-random",
                           "--sample-budget", "steps", "--num-envs", "80"])
    assert budget["sample_budget"] == "steps" and results["sample_budget"] == "episodes"
    assert all(np.isfinite(budget["returns"]))
    with pytest.raises(SystemExit):
        eval_rl.main(["--logdir", str(tmp_path / "maml"), "--pretrained-logdir", str(tmp_path / "other"),
                      "--tasks", "2", "--steps", "1", "--no-random"])
    assert "hidden: (8,) vs (100, 100)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_rl.main(["--logdir", str(tmp_path / "maml"), "--export", str(tmp_path / "models" / "meta")])
    assert "not allowed with argument" in capsys.readouterr().err
    adapted = os.path.join(ROOT, "saved_models", "navigation2d_adapted_policy")
    with pytest.raises(SystemExit):
        eval_rl.main(["--export", adapted, "--tasks", "2", "--steps", "1", "--no-random"])
    assert "is not a meta-policy export carrying its run's settings" in capsys.readouterr().err


def test_a_step_budget_run_trains_and_older_runs_keep_whole_episodes(tmp_path, tiny_preset):
    learner = MAMLTRPO(tiny_preset(sample_budget="steps"), str(tmp_path / "steps"))
    metrics = learner.step()
    assert np.isfinite([metrics["return_pre"], metrics["return_post"], metrics["kl"]]).all()
    assert metrics["kl"] <= learner.config.max_kl
    learner.close()
    # runs written before the setting existed sampled whole episodes, and resume so
    saved = json.loads(preset("navigation2d").to_json())
    del saved["sample_budget"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    from tf_maml import training
    from tf_maml.rl.maml_trpo import MAMLTRPOConfig

    assert training.load_config(MAMLTRPOConfig, str(tmp_path)).sample_budget == "episodes"
    with pytest.raises(ValueError, match="sample_budget"):
        preset("navigation2d", sample_budget="time")


def test_a_run_keeps_the_env_version_it_was_made_with(tmp_path):
    """The Ant presets moved to v1: a run made on v0 still resumes from the same command, on v0."""
    made = preset("ant-dir", env_id="tf_maml/AntDir-v0", meta_batch_size=2, n_traj=2, num_envs=2)
    (tmp_path / "config.json").write_text(made.to_json())
    asked = {"env_id": preset("ant-dir").env_id, "meta_batch_size": 2}
    learner = MAMLTRPO.for_run(preset("ant-dir", meta_batch_size=2, n_traj=2, num_envs=2), str(tmp_path), asked)
    assert learner.config.env_id == "tf_maml/AntDir-v0" and learner.config == made
    learner.close()
    with pytest.raises(ValueError, match="env_id: asked 'tf_maml/HalfCheetahDir-v0', run has 'tf_maml/AntDir-v0'"):
        MAMLTRPO.for_run(preset("halfcheetah-dir"), str(tmp_path), {"env_id": "tf_maml/HalfCheetahDir-v0"})


def test_a_run_continues_from_its_exported_meta_policy_exactly(tmp_path, capsys, tiny_preset):
    """Run directories stay on their machine; a meta-policy export carries the run's settings, policy and
    iteration, so ``train_rl.py --init-from`` goes on with the very batches the run would have sampled."""
    from tf_maml.rl import export as rl_export

    train_rl = load_script("train_rl")
    config = tiny_preset(num_envs=8, seed=2)
    original = MAMLTRPO(config, str(tmp_path / "run"))
    original.train(2)
    base = str(tmp_path / "models")
    rl_export.main(["--logdir", str(tmp_path / "run"), "--base", base, "--name", "meta", "--steps", "0"])
    export = capsys.readouterr().out.strip().splitlines()[-1]
    original.step()

    logdir = str(tmp_path / "elsewhere")
    common = ["--env", "navigation2d", "--init-from", os.path.dirname(export), "--logdir", logdir]
    train_rl.main([*common, "--iterations", "3"])
    assert "it    3" in capsys.readouterr().out
    continued = MAMLTRPO.from_logdir(logdir)
    np.testing.assert_array_equal(continued.theta().numpy(), original.theta().numpy())
    assert continued.config == config
    assert json.load(open(os.path.join(logdir, "initialised_from.json")))["iteration"] == 2
    continued.close()
    original.close()
    rl_export.main(["--logdir", logdir, "--base", base, "--name", "meta", "--steps", "0"])  # a newer version there
    assert capsys.readouterr().out.strip().endswith(os.path.join("meta", "2"))
    train_rl.main([*common, "--iterations", "4"])  # the same command again resumes the new run
    assert "resuming from iteration 3" in capsys.readouterr().out

    older = str(tmp_path / "older" / "1")  # as exports were before they carried their run's settings
    shutil.copytree(export, older)
    metadata_path = os.path.join(older, "assets", "tf_maml.json")
    metadata = json.load(open(metadata_path))
    del metadata["config"]
    json.dump(metadata, open(metadata_path, "w"))
    adapted = os.path.join(ROOT, "saved_models", "navigation2d_adapted_policy")
    for flags, says in [(["--init-from", adapted, "--logdir", str(tmp_path / "a")], "not a meta-policy export"),
                        (["--init-from", older, "--logdir", str(tmp_path / "b")], "exported before exports carried"),
                        (["--init-from", export, "--logdir", str(tmp_path / "c"), "--meta-batch-size", "4"],
                         r"meta_batch_size: asked 4, run has 2"),
                        (["--init-from", export, "--logdir", str(tmp_path / "run")], "not started from an export")]:
        with pytest.raises(SystemExit):
            train_rl.main(["--env", "navigation2d", "--iterations", "5", *flags])
        assert re.search(says, capsys.readouterr().err), says
    assert not any(os.path.exists(tmp_path / d) for d in "abc")  # refused before anything was written
