"""An interrupted run that resumes ends exactly where an uninterrupted one does, also from an export."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from tf_maml import MAML, serving, training
from tf_maml.data.sinusoid import sinusoid_episodes
from tf_maml.models.mlp import sinusoid_mlp
from tf_maml.training import fit_resumable, read_budget, start_from_export


def fresh():
    keras.utils.set_random_seed(0)
    maml = MAML(sinusoid_mlp(seed=0), inner_lr=0.01, learn_inner_lr=True)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return maml


def make_dataset(start):
    return sinusoid_episodes(5, 10, seed=7, start_step=start)


def test_resume_is_exact(tmp_path):
    straight = fresh()
    fit_resumable(straight, make_dataset, 40, 10, str(tmp_path / "a"), verbose=0)

    first = fresh()
    fit_resumable(first, make_dataset, 20, 10, str(tmp_path / "b"), verbose=0)  # "interrupted" at step 20
    budget = read_budget(str(tmp_path / "b" / "budget.json"))
    assert budget["meta_steps"] == 20 and budget["sessions"] == 1 and budget["wall_seconds"] > 0
    resumed = fresh()
    history = fit_resumable(resumed, make_dataset, 40, 10, str(tmp_path / "b"), verbose=0)
    assert history.epoch == [2, 3]
    assert int(resumed.optimizer.iterations) == 40
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert (tmp_path / "b" / "logs").exists()
    resumed_budget = read_budget(str(tmp_path / "b" / "budget.json"))  # summed over both sessions
    assert resumed_budget["meta_steps"] == 40 and resumed_budget["sessions"] == 2
    assert resumed_budget["wall_seconds"] > budget["wall_seconds"]
    assert fit_resumable(resumed, make_dataset, 40, 10, str(tmp_path / "b"), verbose=0) is None


def test_resume_with_other_epoch_length_says_how_to_fix(tmp_path):
    fit_resumable(fresh(), make_dataset, 10, 10, str(tmp_path), verbose=0)
    with pytest.raises(ValueError, match=r"meta-step 10, not a multiple of steps_per_epoch \(4\).*config.json"):
        fit_resumable(fresh(), make_dataset, 40, 4, str(tmp_path), verbose=0)
    assert read_budget(str(tmp_path / "budget.json"))["meta_steps"] == 10  # nothing already saved is lost


def test_epochs_that_steps_per_execution_would_overshoot_are_refused(tmp_path):
    maml = fresh()
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", steps_per_execution=4)
    with pytest.raises(ValueError, match=r"steps_per_epoch \(10\) must be a multiple of steps_per_execution \(4\)"):
        fit_resumable(maml, make_dataset, 20, 10, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists() and int(maml.optimizer.iterations) == 0
    from tf_maml.recipes.sinusoid import SinusoidConfig
    from tf_maml.settings import InvalidSettings

    with pytest.raises(InvalidSettings, match="steps_per_execution"):
        SinusoidConfig(meta_steps=300, steps_per_epoch=150, steps_per_execution=100)


def test_a_run_continued_from_its_export_ends_where_the_uninterrupted_run_does(tmp_path):
    """Run directories stay on their machine; the export travels. Continuing it is exact: weights, Adam's
    state and the step come from the export, and the step-indexed episode stream goes on where it stopped."""
    straight = fresh()
    fit_resumable(straight, make_dataset, 40, 10, str(tmp_path / "straight"), verbose=0)
    first = fresh()
    fit_resumable(first, make_dataset, 20, 10, str(tmp_path / "first"), verbose=0)
    export = serving.export_meta_learner(first, str(tmp_path / "models"), "sinusoid",
                                         metadata={"training": read_budget(str(tmp_path / "first" / "budget.json"))})

    workdir = str(tmp_path / "elsewhere")
    continued = fresh()
    assert start_from_export(continued, export, workdir) == 20
    budget = read_budget(os.path.join(workdir, "budget.json"))
    assert budget["meta_steps"] == 20 and budget["sessions"] == 1 and budget["wall_seconds"] > 0
    assert budget["initialised_from"] == os.path.realpath(export)
    history = fit_resumable(continued, make_dataset, 40, 10, workdir, verbose=0)
    assert history.epoch == [2, 3] and int(continued.optimizer.iterations) == 40
    for a, b in zip(continued.weights, straight.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert read_budget(os.path.join(workdir, "budget.json"))["sessions"] == 2

    # The same command again resumes the new run's own checkpoint, also once a newer version of the export
    # has been written under the same name.
    serving.export_meta_learner(continued, str(tmp_path / "models"), "sinusoid")
    rerun = fresh()
    assert start_from_export(rerun, os.path.dirname(export), workdir) == 40
    np.testing.assert_allclose(np.asarray(rerun.weights[0]), np.asarray(straight.weights[0]), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not started from an export.*drop --init-from"):
        start_from_export(fresh(), export, str(tmp_path / "first"))


def test_continuing_an_export_into_another_architecture_is_refused_and_writes_nothing(tmp_path):
    maml = fresh()
    fit_resumable(maml, make_dataset, 10, 10, str(tmp_path / "run"), verbose=0)
    export = serving.export_meta_learner(maml, str(tmp_path / "models"), "sinusoid")
    other = MAML(sinusoid_mlp(hidden=(20,), seed=0), inner_lr=0.01, learn_inner_lr=True)
    other.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    with pytest.raises(ValueError, match="another shape.*export's settings"):
        start_from_export(other, export, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_the_shipped_20_way_model_continues_with_its_own_settings_and_state(tmp_path):
    """``train_omniglot.py --init-from saved_models/omniglot_20way1shot``: the export's config, refused flags,
    and its weights, Adam state and step in the new run's first checkpoint."""
    from tf_maml.recipes import omniglot

    export = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "saved_models",
                          "omniglot_20way1shot")
    shipped = serving.read_metadata(export)
    workdir = str(tmp_path / "run")
    config, _ = omniglot.config_for_run("20way1shot", {"meta_steps": 30_000}, workdir, init_from=export)
    assert config.meta_steps == 30_000
    assert omniglot.config_for_run(None, {"meta_steps": 30_000}, workdir, init_from=export)[0] == config
    exported = omniglot.training.config_from_dict(omniglot.OmniglotConfig, shipped["config"], export)
    assert config == dataclasses.replace(exported, meta_steps=30_000)
    with pytest.raises(ValueError, match="ways: asked 5, run has 20"):
        omniglot.config_for_run("5way1shot", {}, workdir, init_from=export)
    with pytest.raises(ValueError, match="batch_norm: asked 'running', run has 'transductive'"):
        omniglot.config_for_run("20way1shot", {"batch_norm": "running"}, workdir, init_from=export)

    leftover = str(tmp_path / "leftover")  # settings of a run that never reached a checkpoint: not mixed in
    omniglot.training.save_config(omniglot.PRESETS["20way1shot"], leftover)
    with pytest.raises(ValueError, match="leftover already holds a run \\(not started from an export\\)"):
        omniglot.config_for_run(None, {}, leftover, init_from=export)

    maml = omniglot.build_meta_learner(config)
    assert start_from_export(maml, export, workdir) == shipped["meta_steps_trained"]
    reference = serving.load(export)
    for a, b in zip(maml.weights + maml.optimizer.variables, reference.weights + reference.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with open(os.path.join(workdir, "budget.json")) as f:
        budget = json.load(f)
    assert budget["meta_steps"] == shipped["meta_steps_trained"]
    assert budget["wall_seconds"] == shipped["training"]["wall_seconds"]


def test_a_continuation_may_go_on_at_another_k_shot(tmp_path):
    """``--init-from saved_models/omniglot_20way1shot --preset 20way5shot``: the 1-shot meta-learner goes on
    training on 5-shot tasks (the network does not depend on K) with the export's other settings and state; the
    budget records what changed, a rerun resumes it, and the ways (the network's output) still cannot change."""
    from tf_maml.recipes import omniglot

    export = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "saved_models",
                          "omniglot_20way1shot")
    shipped = serving.read_metadata(export)
    exported = omniglot.training.config_from_dict(omniglot.OmniglotConfig, shipped["config"], export)
    workdir = str(tmp_path / "five_shot")
    config, _ = omniglot.config_for_run("20way5shot", {"meta_steps": 20_000}, workdir, init_from=export)
    assert config == dataclasses.replace(exported, shots=5, meta_steps=20_000)
    maml = omniglot.build_meta_learner(config)
    assert start_from_export(maml, export, workdir, config) == shipped["meta_steps_trained"]
    omniglot.training.save_config(config, workdir)
    step = shipped["meta_steps_trained"]
    budget = read_budget(os.path.join(workdir, "budget.json"))
    earlier = shipped["training"].get("changes", [])  # the export's own lineage stays first
    source = serving.source_path(serving.resolve_version_dir(export))
    assert budget["changes"] == [*earlier, {"meta_step": step, "from": source, "settings": {"shots": [1, 5]}}]
    for again in ("20way5shot", None):  # a rerun, with or without the preset, resumes the 5-shot run
        assert omniglot.config_for_run(again, {"meta_steps": 20_000}, workdir, init_from=export)[0] == config
    with pytest.raises(ValueError, match="shots: asked 1, run has 5"):
        omniglot.config_for_run("20way1shot", {}, workdir, init_from=export)
    with pytest.raises(ValueError, match="ways: asked 5, run has 20"):
        omniglot.config_for_run("5way5shot", {}, str(tmp_path / "other"), init_from=export)

    # Exported and continued again (back at 1 shot): the first change stays on the record.
    five_shot = serving.export_meta_learner(maml, str(tmp_path / "models"), "five_shot",
                                            metadata={"config": dataclasses.asdict(config), "training": budget})
    back, _ = omniglot.config_for_run("20way1shot", {}, str(tmp_path / "back"), init_from=five_shot)
    start_from_export(omniglot.build_meta_learner(back), five_shot, str(tmp_path / "back"), back)
    changes = read_budget(str(tmp_path / "back" / "budget.json"))["changes"]
    assert [c["settings"] for c in changes] == [*(c["settings"] for c in earlier), {"shots": [1, 5]}, {"shots": [5, 1]}]

    # Without --preset, an export whose N-way K-shot is no preset is not quietly moved to the default's K.
    three_shot = dataclasses.replace(omniglot.PRESETS["5way1shot"], shots=3)
    odd = serving.export_meta_learner(omniglot.build_meta_learner(three_shot), str(tmp_path / "models"), "odd",
                                      metadata={"config": dataclasses.asdict(three_shot)})
    with pytest.raises(ValueError, match="shots: asked 1, run has 3"):
        omniglot.config_for_run(None, {}, str(tmp_path / "odd"), init_from=odd)

    assert omniglot.with_shots(exported, 10) == dataclasses.replace(exported, shots=10)
    with pytest.raises(ValueError, match="shots"):
        omniglot.with_shots(exported, 0)
    with pytest.raises(ValueError, match="11 shots and 11 queries per class need 22 drawings .* at most 10 shots"):
        omniglot.with_shots(exported, 11)
    assert omniglot.with_shots(exported, 5).query_count == 5  # K queries follow the shots...
    fixed = dataclasses.replace(exported, queries=15)
    assert omniglot.with_shots(fixed, 5).query_count == 15  # ...unless the run fixed its own number
    with pytest.raises(ValueError, match="6 shots and 15 queries per class need 21 drawings .* at most 5 shots"):
        omniglot.with_shots(fixed, 6)


def test_a_continuation_may_anneal_the_rate_its_export_kept_constant(tmp_path):
    """``--init-from EXPORT --cosine-meta-lr 2000`` on an export trained at a constant rate: MAML++'s cosine
    annealing begins at the export's step (the rate it trained at until then), ``--meta-steps`` is checked
    against the run's own epoch length, and a rerun of the command resumes that run."""
    from tf_maml.recipes import omniglot

    constant = dataclasses.replace(omniglot.PRESETS["5way1shot"], steps_per_epoch=100, meta_steps=300)
    trained = omniglot.build_meta_learner(constant)
    trained.optimizer.build(trained.trainable_variables)
    trained.optimizer.iterations.assign(300)  # as if trained 300 meta-steps
    export = serving.export_meta_learner(trained, str(tmp_path / "models"), "constant",
                                         metadata={"config": dataclasses.asdict(constant)})
    workdir = str(tmp_path / "run")
    asked = {"meta_steps": 2300, "cosine_meta_lr": 2000}  # not a multiple of the preset's epoch (200)
    config, _ = omniglot.config_for_run(None, asked, workdir, init_from=export)
    assert (config.cosine_meta_lr, config.cosine_meta_lr_from, config.meta_steps) == (2000, 300, 2300)
    rate = omniglot.meta_learning_rate(config)
    for at, expected in [(0, 1e-3), (300, 1e-3), (1300, 0.505e-3), (2300, 1e-5), (5000, 1e-5)]:
        np.testing.assert_allclose(float(rate(at)), expected, rtol=1e-5)
    assert omniglot.meta_learning_rate(constant) == 1e-3  # unchanged without the flag

    maml = omniglot.build_meta_learner(config)  # what training does first
    assert start_from_export(maml, export, workdir) == 300
    omniglot.training.save_config(config, workdir)
    np.testing.assert_allclose(float(maml.optimizer.learning_rate), 1e-3, rtol=1e-5)
    assert omniglot.config_for_run(None, asked, workdir, init_from=export)[0] == config
    with pytest.raises(ValueError, match="cosine_meta_lr: asked 500, run has 2000"):
        omniglot.config_for_run(None, {"cosine_meta_lr": 500}, workdir, init_from=export)
    annealing = serving.export_meta_learner(maml, str(tmp_path / "models"), "annealing",
                                            metadata={"config": dataclasses.asdict(config)})
    again = omniglot.config_for_run(None, {"meta_steps": 2400}, str(tmp_path / "next"), init_from=annealing)[0]
    assert (again.cosine_meta_lr, again.cosine_meta_lr_from) == (2000, 300)  # its schedule goes on as it was
    with pytest.raises(ValueError, match="cosine_meta_lr = 2000 from meta-step 300.*--warm-restart"):
        omniglot.config_for_run(None, {"cosine_meta_lr": 500}, str(tmp_path / "next"), init_from=annealing)


def test_a_warm_restart_begins_the_annealing_again_at_the_exports_step(tmp_path):
    """``--init-from EXPORT --cosine-meta-lr 1000 --warm-restart`` on an export that annealed: the rate goes back
    to ``meta_lr`` at the export's step and anneals again over the new length (SGDR); a rerun resumes it, and
    the flag is refused where there is nothing to restart."""
    from tf_maml.recipes import omniglot

    annealed = dataclasses.replace(omniglot.PRESETS["5way1shot"], steps_per_epoch=100, meta_steps=2300,
                                   cosine_meta_lr=2000, cosine_meta_lr_from=300)
    trained = omniglot.build_meta_learner(annealed)
    trained.optimizer.build(trained.trainable_variables)
    trained.optimizer.iterations.assign(2300)
    np.testing.assert_allclose(float(trained.optimizer.learning_rate), 1e-5, rtol=1e-5)  # annealed out
    moments = [v for v in trained.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    for v in moments:
        v.assign(np.random.default_rng(0).uniform(0.1, 1.0, v.shape))
    export = serving.export_meta_learner(trained, str(tmp_path / "models"), "annealed",
                                         metadata={"config": dataclasses.asdict(annealed)})
    workdir = str(tmp_path / "restart")
    asked = {"meta_steps": 3300, "cosine_meta_lr": 1000}
    config, _ = omniglot.config_for_run(None, asked, workdir, init_from=export, warm_restart=True)
    assert (config.cosine_meta_lr, config.cosine_meta_lr_from, config.meta_steps) == (1000, 2300, 3300)
    rate = omniglot.meta_learning_rate(config)
    for at, expected in [(2300, 1e-3), (2800, 0.505e-3), (3300, 1e-5)]:
        np.testing.assert_allclose(float(rate(at)), expected, rtol=1e-5)

    maml = omniglot.build_meta_learner(config)
    assert start_from_export(maml, export, workdir) == 2300
    omniglot.training.save_config(config, workdir)
    np.testing.assert_allclose(float(maml.optimizer.learning_rate), 1e-3, rtol=1e-5)  # restarted
    carried = [v for v in maml.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert len(carried) == len(moments) > 0
    for v_restart, v_export in zip(carried, moments):
        np.testing.assert_array_equal(v_restart.numpy(), v_export.numpy())  # Adam's moments carried over
    rerun = omniglot.config_for_run(None, asked, workdir, init_from=export, warm_restart=True)[0]
    assert rerun == config
    # A restart may begin from a lower peak (--meta-lr, a fine-tune); a continuation beginning nothing may not.
    lower = {**asked, "meta_lr": 2e-4}
    finetune = omniglot.config_for_run(None, lower, str(tmp_path / "lower"), init_from=export, warm_restart=True)[0]
    assert (finetune.meta_lr, finetune.cosine_meta_lr_from) == (2e-4, 2300)
    for at, expected in [(2300, 2e-4), (2800, 1.01e-4), (3300, 2e-6)]:
        np.testing.assert_allclose(float(omniglot.meta_learning_rate(finetune)(at)), expected, rtol=1e-5)
    omniglot.training.save_config(finetune, str(tmp_path / "lower"))
    with open(tmp_path / "lower" / "budget.json", "w") as f:
        json.dump({"initialised_from": os.path.realpath(export)}, f)
    assert omniglot.config_for_run(None, lower, str(tmp_path / "lower"), init_from=export,
                                   warm_restart=True)[0] == finetune
    with pytest.raises(ValueError, match="meta_lr: asked 0.0002, run has 0.001"):
        omniglot.config_for_run(None, {"meta_lr": 2e-4}, str(tmp_path / "plain"), init_from=export)
    same = omniglot.config_for_run(None, {"cosine_meta_lr": 2000}, str(tmp_path / "same"), init_from=export)[0]
    assert (same.cosine_meta_lr, same.cosine_meta_lr_from) == (2000, 300)  # without the flag: goes on as it was
    for asked_wrongly, kwargs in [({"cosine_meta_lr": 1000}, {}), ({}, {"init_from": export})]:
        with pytest.raises(ValueError, match="warm restart begins a schedule .*--cosine-meta-lr"):
            omniglot.config_for_run(None, asked_wrongly, str(tmp_path / "bad"), warm_restart=True, **kwargs)
    with pytest.raises(ValueError, match="trained 2300 meta-steps: a warm restart from there needs more"):
        omniglot.config_for_run(None, {"cosine_meta_lr": 1000}, str(tmp_path / "bad"), init_from=export,
                                warm_restart=True)
    # A continuation that went on with the export's schedule is not restarted by a rerun with the flag.
    omniglot.training.save_config(same, str(tmp_path / "same"))
    with open(tmp_path / "same" / "budget.json", "w") as f:
        json.dump({"initialised_from": os.path.realpath(export)}, f)
    with pytest.raises(ValueError, match="with the schedule it had .*from meta-step 300.*not a warm restart at its "
                                         "meta-step 2300"):
        omniglot.config_for_run(None, {"cosine_meta_lr": 2000}, str(tmp_path / "same"), init_from=export,
                                warm_restart=True)
    assert not (tmp_path / "bad").exists()


class _RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.at = {}

    def on_epoch_end(self, epoch, logs=None):
        self.at[self.model.meta_steps_done()] = ([w.numpy() for w in self.model.weights], logs["val_loss"])


def test_the_best_epochs_by_validation_are_kept_across_resumes_and_restore(tmp_path):
    """``keep_best``: the checkpoints of the epochs with the lowest validation loss survive the newest-three
    rotation and a resume, ranked best first, and each restores that epoch's weights."""
    validation = sinusoid_episodes(5, 10, seed=99).take(2).cache()
    workdir = str(tmp_path / "run")
    record = _RecordWeights()
    run = dict(validation_data=validation, validation_steps=2, keep_best=2, monitor="val_loss", verbose=0)
    fit_resumable(fresh(), make_dataset, 30, 10, workdir, callbacks=[record], **run)
    resumed = fresh()
    fit_resumable(resumed, make_dataset, 60, 10, workdir, callbacks=[record], **run)
    ranked = sorted(record.at, key=lambda step: record.at[step][1])[:2]
    paths = training.best_checkpoints(workdir, 2)
    assert [os.path.basename(p) for p in paths] == [f"ckpt-{step}" for step in ranked]
    assert sorted(os.listdir(os.path.dirname(paths[0]))) == sorted(
        ["best.json"] + [os.path.basename(p) + ext for p in paths for ext in (".index", ".data-00000-of-00001")])
    for path, step in zip(paths, ranked):
        restored = fresh()
        assert serving.restore_checkpoint(restored, path) == step
        for mine, kept in zip(restored.weights, record.at[step][0]):
            np.testing.assert_array_equal(np.asarray(mine), kept)
    with pytest.raises(ValueError, match="3 best checkpoints asked .* keeps 2: ask for at most 2"):
        training.best_checkpoints(workdir, 3)
    # Refused before training: another ranking, or fewer kept (the files of the others would go)
    with pytest.raises(ValueError, match="ranks checkpoints by 'val_loss', not 'val_accuracy'"):
        fit_resumable(resumed, make_dataset, 70, 10, workdir, **{**run, "monitor": "val_accuracy"})
    for fewer, says in ((1, "would delete some of them"), (0, "would leave that ranking stale")):
        with pytest.raises(ValueError, match=f"keeps the 2 best checkpoints; keep_best={fewer} {says}: keep at least 2"):
            fit_resumable(resumed, make_dataset, 70, 10, workdir, **{**run, "keep_best": fewer})
    assert training.kept_best(workdir) == 2 and int(resumed.optimizer.iterations) == 60
    # What an interrupted write left in best/ goes at the next ranked epoch; a third is kept there
    best_dir = os.path.dirname(paths[0])
    os.makedirs(os.path.join(best_dir, "ckpt-70_temp"))
    open(os.path.join(best_dir, "ckpt-70.index"), "w").close()
    fit_resumable(resumed, make_dataset, 70, 10, workdir, callbacks=[record], **{**run, "keep_best": 3})
    kept = {os.path.basename(p) for p in training.best_checkpoints(workdir, 3)}
    assert {name.split(".")[0] for name in os.listdir(best_dir)} == kept | {"best"} and len(kept) == 3
    # The first epoch is ranked before the run's first checkpoint is saved, and restores as well
    fit_resumable(fresh(), make_dataset, 10, 10, str(tmp_path / "one"), **{**run, "keep_best": 1})
    assert serving.restore_checkpoint(fresh(), training.best_checkpoints(str(tmp_path / "one"), 1)[0]) == 10
    with pytest.raises(ValueError, match="pass validation_data"):
        fit_resumable(fresh(), make_dataset, 10, 10, str(tmp_path / "other"), keep_best=1, verbose=0)
    with pytest.raises(ValueError, match=r"ranks epochs by 'val_acc', which validation does not report: pass one of "
                                         r"\['val_loss', 'val_pre_adaptation_loss'\]"):
        fit_resumable(fresh(), make_dataset, 10, 10, str(tmp_path / "typo"), **{**run, "monitor": "val_acc"})
