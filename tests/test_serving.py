"""Exports serve what the in-memory model computes, adapt inside the graph as MAML.adapt does, and are
versioned and written atomically the way TF Serving needs."""

import json
import os
import pathlib
import re
import runpy
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_maml
from tf_maml import MAML, serving
from tf_maml.data.sinusoid import sample_sinusoid_tasks, sinusoid_episodes
from tf_maml.models.convnets import omniglot_convnet
from tf_maml.models.mlp import sinusoid_mlp

REPO = pathlib.Path(__file__).resolve().parents[1]
SAVED_MODEL_CLI = pathlib.Path(sys.executable).with_name("saved_model_cli")
TOL = 1e-5


def sinusoid_task(seed, shots=10, queries=7):
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([seed, 1], 1, shots, queries)
    return sx[0].numpy(), sy[0].numpy(), qx[0].numpy(), qy[0].numpy()


def bn_mlp():
    inputs = keras.Input(shape=(1,))
    h = keras.layers.Dense(16, name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(keras.layers.ReLU()(h)))


def compiled(model, **kwargs):
    maml = MAML(model, **kwargs)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return maml


def perturb(maml, seed=0):
    """Make learned rates and BN statistics non-trivial, so the export must really carry them."""
    rng = np.random.default_rng(seed)
    for lr in maml.inner_lrs:
        if lr is not None and lr.trainable:
            lr.assign(rng.uniform(0.005, 0.05, lr.shape).astype("float32"))
    for var in maml.model.non_trainable_variables:
        if "moving_mean" in var.path:
            var.assign(rng.normal(0, 0.5, var.shape).astype("float32"))
        elif "moving_variance" in var.path:
            var.assign(rng.uniform(0.5, 2.0, var.shape).astype("float32"))


def adapted_reference(maml, sx, sy, qx, steps):
    """``MAML.adapt`` then ``predict``, checked against the engine's batched path."""
    adapted = maml.adapt(tf.constant(sx), tf.constant(sy), steps=steps)
    pred = adapted.predict(qx, verbose=0)
    steps = maml.eval_inner_steps if steps is None else steps
    batched = maml.predict_after_adaptation(sx[None], sy[None], qx[None], steps=(steps,))[0, 0]
    np.testing.assert_allclose(pred, batched, atol=TOL, rtol=0)
    return pred


def theta_reference(maml, x):
    return maml.model(x, training=maml.batch_norm == "transductive").numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A sinusoid meta-learner trained briefly, exported both ways."""
    keras.utils.set_random_seed(0)
    maml = MAML(sinusoid_mlp(seed=1), inner_lr=0.02, inner_steps=1, eval_inner_steps=5)
    maml.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", steps_per_execution=50)
    maml.fit(sinusoid_episodes(10, 10, seed=1), steps_per_epoch=500, epochs=1, verbose=0)
    base = tmp_path_factory.mktemp("saved_models")
    sx, sy, qx, _ = sinusoid_task(42)
    meta_dir = serving.export_meta_learner(maml, base, "sinusoid", metadata={"training": {"meta_steps": 500}})
    adapted_dir = serving.export_adapted(maml, sx, sy, base, "sinusoid_adapted")
    return {"maml": maml, "base": base, "meta": meta_dir, "adapted": adapted_dir, "task": (sx, sy, qx)}


# ------------------------------------------------------------------------- fresh process, CLI
def test_fresh_process_serves_what_the_in_memory_model_computes(trained, tmp_path):
    maml, (sx, sy, qx) = trained["maml"], trained["task"]
    np.savez(tmp_path / "in.npz", sx=sx, sy=sy, qx=qx)
    script = textwrap.dedent(
        """
        import sys, numpy as np, tensorflow as tf  # serving needs TensorFlow only
        meta_dir, adapted_dir, base, io = sys.argv[1:5]
        d = dict(np.load(io + "/in.npz"))
        meta, adapted = tf.saved_model.load(meta_dir), tf.saved_model.load(adapted_dir)
        out = {
            "theta": meta.signatures["serving_default"](inputs=d["qx"])["predictions"].numpy(),
            "served_adapt": meta.signatures["adapt_and_predict"](
                support_x=d["sx"], support_y=d["sy"], query_x=d["qx"])["predictions"].numpy(),
            "adapted": adapted.signatures["serving_default"](inputs=d["qx"])["predictions"].numpy(),
        }
        import tf_maml  # then back to a trainable meta-learner, from the <name> directory
        maml = tf_maml.load(base + "/sinusoid")
        out["loaded_adapt"] = maml.adapt(d["sx"], d["sy"])(d["qx"]).numpy()
        np.savez(io + "/out.npz", **out)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script, trained["meta"], trained["adapted"], str(trained["base"]), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    expected_adapted = adapted_reference(maml, sx, sy, qx, maml.eval_inner_steps)
    np.testing.assert_allclose(out["theta"], maml.predict(qx, verbose=0), atol=TOL, rtol=0)
    for key in ("served_adapt", "adapted", "loaded_adapt"):
        assert out[key].shape == (len(qx), 1)
        np.testing.assert_allclose(out[key], expected_adapted, atol=TOL, rtol=0, err_msg=key)


def test_saved_model_cli_lists_signatures_and_runs_them(trained, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = [str(SAVED_MODEL_CLI)] if SAVED_MODEL_CLI.exists() else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    sx, sy, qx = trained["task"]
    fmt = lambda a: json.dumps(a.tolist())  # noqa: E731
    commands = {
        "show": cli + ["show", "--dir", trained["meta"], "--all"],
        "default": cli + ["run", "--dir", trained["adapted"], "--tag_set", "serve", "--signature_def",
                          "serving_default", "--input_exprs", f"inputs={fmt(qx)}", "--outdir", str(tmp_path / "d")],
        "adapt": cli + ["run", "--dir", trained["meta"], "--tag_set", "serve", "--signature_def", "adapt_and_predict",
                        "--input_exprs", f"support_x={fmt(sx)};support_y={fmt(sy)};query_x={fmt(qx)}",
                        "--outdir", str(tmp_path / "a")],
    }
    procs = {k: subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    results = {k: (p.communicate(timeout=120), p.returncode) for k, p in procs.items()}
    for key, ((_, err), rc) in results.items():
        assert rc == 0, (key, err[-3000:])
    shown = results["show"][0][0]
    for text in ("signature_def['serving_default']", "signature_def['adapt_and_predict']", "inputs['inputs']",
                 "inputs['support_x']", "inputs['support_y']", "inputs['query_x']", "outputs['predictions']"):
        assert text in shown, text
    assert "shape: (-1, 1)" in shown and "dtype: DT_FLOAT" in shown
    expected = adapted_reference(trained["maml"], sx, sy, qx, trained["maml"].eval_inner_steps)
    for sub in ("d", "a"):
        got = np.load(tmp_path / sub / "predictions.npy")
        assert got.shape == (len(qx), 1)
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_served_meta_learner_adapts_on_fresh_tasks(trained):
    served = tf.saved_model.load(trained["meta"])
    pre, post = [], []
    for seed in range(1000, 1030):
        sx, sy, qx, qy = sinusoid_task(seed, shots=10, queries=20)
        theta = served.signatures["serving_default"](inputs=qx)["predictions"].numpy()
        adapted = served.signatures["adapt_and_predict"](support_x=sx, support_y=sy, query_x=qx)["predictions"].numpy()
        pre.append(((theta - qy) ** 2).mean())
        post.append(((adapted - qy) ** 2).mean())
    assert np.mean(post) < 0.4 * np.mean(pre), (np.mean(pre), np.mean(post))


def test_metadata_asset_merges_inferred_and_given_fields(trained):
    meta = serving.read_metadata(trained["base"] / "sinusoid")
    assert meta["kind"] == "meta_learner" and meta["task_family"] == "regression"
    assert meta["tf_maml_version"] == tf_maml.__version__
    assert (meta["input_shape"], meta["output_size"], meta["inner_steps"], meta["inner_lr"]) == ([1], 1, 5, 0.02)
    assert meta["training"] == {"meta_steps": 500} and meta["meta_steps_trained"] == 500
    assert os.path.isfile(os.path.join(trained["meta"], "assets", serving.KERAS_ASSET))
    adapted = serving.read_metadata(trained["adapted"])
    assert adapted["kind"] == "model" and adapted["adapted_on_support_examples"] == 10


# ------------------------------------------------------------------------- adaptation in the graph
def omniglot_like(ways=3):
    model = omniglot_convnet(ways, input_shape=(28, 28, 1), filters=4)
    maml = MAML(model, inner_lr=0.1, adapt_layers=["block4_conv", "block4_bn", "head"])
    maml.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    sx = rng.random((ways * 2, 28, 28, 1), dtype=np.float32)
    sy = np.repeat(np.arange(ways, dtype=np.int32), 2)
    qx = rng.random((5, 28, 28, 1), dtype=np.float32)
    return maml, (sx, sy, qx)


CASES = {
    "plain-1-step": (lambda: compiled(sinusoid_mlp(seed=0), inner_lr=0.03), 1),
    "plain-4-steps": (lambda: compiled(sinusoid_mlp(seed=0), inner_lr=0.03), 4),
    "meta-sgd-anil": (lambda: compiled(sinusoid_mlp(seed=0), learn_inner_lr=True, adapt_layers=["hidden_1", "head"]), 3),
    "bn-transductive": (lambda: compiled(bn_mlp(), inner_lr=0.05, batch_norm="transductive"), 2),
    "bn-running": (lambda: compiled(bn_mlp(), inner_lr=0.05, batch_norm="running"), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adapt_and_predict_equals_maml_adapt(case, tmp_path):
    make, steps = CASES[case]
    maml = make()
    perturb(maml)
    sx, sy, qx, _ = sinusoid_task(7)
    served = tf.saved_model.load(serving.export_meta_learner(maml, tmp_path, "m", steps=steps))
    got = served.signatures["adapt_and_predict"](support_x=sx, support_y=sy, query_x=qx)["predictions"].numpy()
    np.testing.assert_allclose(got, adapted_reference(maml, sx, sy, qx, steps), atol=TOL, rtol=0)
    theta = served.signatures["serving_default"](inputs=qx)["predictions"].numpy()
    np.testing.assert_allclose(theta, theta_reference(maml, qx), atol=TOL, rtol=0)
    assert np.abs(got - theta).max() > 1e-4  # adaptation really happened
    if case.startswith("bn"):  # an exported adapted model keeps the batch-norm mode too
        adapted = tf.saved_model.load(serving.export_adapted(maml, sx, sy, tmp_path, "a", steps=steps))
        np.testing.assert_allclose(adapted.signatures["serving_default"](inputs=qx)["predictions"].numpy(), got,
                                   atol=TOL, rtol=0)


def test_classifier_export_takes_int_labels_and_returns_logits(tmp_path):
    maml, (sx, sy, qx) = omniglot_like(ways=3)
    path = serving.export_meta_learner(maml, tmp_path, "omniglot", steps=2)
    fn = tf.saved_model.load(path).signatures["adapt_and_predict"]
    assert fn.structured_input_signature[1]["support_y"] == tf.TensorSpec([None], tf.int32, "support_y")
    got = fn(support_x=sx, support_y=sy, query_x=qx)["predictions"].numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, adapted_reference(maml, sx, sy, qx, 2), atol=TOL, rtol=0)
    meta = serving.read_metadata(path)
    assert meta["task_family"] == "classification" and meta["num_classes"] == 3
    assert meta["support_y"] == {"shape": [None], "dtype": "int32"}
    with pytest.raises(TypeError, match=r"dtype=tf.float32, name='support_y'\) to TensorSpec\(shape=\(None,\), dtype=tf.int32"):
        fn(support_x=sx, support_y=tf.constant(sy, tf.float32), query_x=qx)  # float labels


def test_wrong_shapes_and_dtypes_are_rejected(tmp_path):
    maml = compiled(sinusoid_mlp(seed=0))
    meta = tf.saved_model.load(serving.export_meta_learner(maml, tmp_path, "m"))
    plain = tf.saved_model.load(serving.export_model(maml.model, tmp_path, "p"))
    sx, sy, qx, _ = sinusoid_task(3)
    errors = (tf.errors.InvalidArgumentError, TypeError, ValueError)
    for loaded in (meta, plain):
        fn = loaded.signatures["serving_default"]
        with pytest.raises(errors, match="expected to be a float tensor but is a double"):
            fn(inputs=tf.constant(qx, tf.float64))  # a typed tensor, as TF Serving receives it
        with pytest.raises(errors, match="not compatible with expected shape"):
            fn(inputs=tf.zeros((3, 2)))  # caught in the graph (ensure_shape), as a served request would be
        with pytest.raises(errors, match="shape"):
            fn(inputs=np.zeros((3, 1, 1), np.float32))
    adapt = meta.signatures["adapt_and_predict"]
    with pytest.raises(errors, match=r"dtype=tf.int32, name='support_y'\) to TensorSpec\(shape=\(None, 1\), dtype=tf.float32"):
        adapt(support_x=sx, support_y=tf.constant(sy.astype(np.int32)), query_x=qx)  # int targets
    with pytest.raises(errors, match="support_y"):
        adapt(support_x=sx, support_y=sy[:, 0], query_x=qx)  # missing feature axis
    with pytest.raises(errors, match="same number of examples"):
        adapt(support_x=sx, support_y=sy[:4], query_x=qx)
    with pytest.raises(errors, match="missing a required argument: 'query_x'"):
        adapt(support_x=sx, support_y=sy)


# ------------------------------------------------------------------------- versions and atomicity
def test_versions_increase_and_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = sinusoid_mlp(seed=0)
    paths = [serving.export_model(model, tmp_path, "sin") for _ in range(3)]
    assert [os.path.basename(p) for p in paths] == ["1", "2", "3"]
    real_save = tf.saved_model.save

    def save_then_crash(obj, export_dir, *args, **kwargs):
        real_save(obj, export_dir, *args, **kwargs)  # the version is fully written ...
        assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
        raise OSError("disk full")  # ... and then the export fails

    monkeypatch.setattr(tf.saved_model, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        serving.export_model(model, tmp_path, "sin")
    with pytest.raises(OSError, match="disk full"):
        serving.export_meta_learner(compiled(model), tmp_path, "new_name")
    assert sorted(os.listdir(tmp_path / "sin")) == ["1", "2", "3"]
    assert not (tmp_path / "new_name").exists()
    monkeypatch.setattr(tf.saved_model, "save", real_save)
    assert os.path.basename(serving.export_model(model, tmp_path, "sin")) == "4"
    assert serving.resolve_version_dir(tmp_path / "sin") == str(tmp_path / "sin" / "4")


# ------------------------------------------------------------------------- load and the script
def test_load_restores_a_meta_learner_that_adapts_and_trains_on(tmp_path):
    maml = MAML(sinusoid_mlp(seed=0), inner_lr=0.02, eval_inner_steps=4, learn_inner_lr=True,
                adapt_layers=["hidden_1", "head"], first_order=True)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    perturb(maml)
    maml.optimizer.build(maml.trainable_variables)
    rng = np.random.default_rng(1)
    for var in maml.optimizer.variables:  # as if trained for 3 steps: non-trivial optimizer state
        var.assign(3 if "iteration" in var.path else rng.normal(0, 1e-3, var.shape).astype(var.dtype))
    serving.export_meta_learner(maml, tmp_path, "sin")
    serving.export_model(maml.model, tmp_path, "plain")
    assert tf_maml.load is serving.load
    loaded = tf_maml.load(tmp_path / "sin")
    assert isinstance(loaded, MAML) and (loaded.eval_inner_steps, loaded.learn_inner_lr) == (4, True)
    sx, sy, qx, _ = sinusoid_task(11)
    np.testing.assert_allclose(adapted_reference(loaded, sx, sy, qx, None), adapted_reference(maml, sx, sy, qx, None),
                               atol=TOL, rtol=0)
    # Weights, learned rates and optimizer state come back, so training resumes where it stopped
    # (the .keras round trip itself is covered by test_maml_persistence).
    assert int(loaded.optimizer.iterations) == 3
    for a, b in zip(loaded.weights + loaded.optimizer.variables, maml.weights + maml.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="not a meta-learner export"):
        tf_maml.load(tmp_path / "plain")


def test_export_script_from_keras_file_and_checkpoint(tmp_path, monkeypatch, capsys):
    maml = compiled(sinusoid_mlp(seed=0), eval_inner_steps=3)
    keras_path = tmp_path / "maml.keras"
    maml.save(keras_path)
    maml.optimizer.build(maml.trainable_variables)  # the checkpoint is newer than the .keras file:
    maml.optimizer.iterations.assign(3)
    for var in maml.model.trainable_variables:
        var.assign(var + 0.05 * np.sign(var.numpy()))
    tf.train.Checkpoint(model=maml, optimizer=maml.optimizer).save(str(tmp_path / "ckpt" / "ckpt"))
    sx, sy, qx, _ = sinusoid_task(5)
    np.savez(tmp_path / "task.npz", support_x=sx.astype(np.float64), support_y=sy)
    base = tmp_path / "saved_models"

    def run_script(*args):
        monkeypatch.setattr(sys, "argv", ["export.py", "--keras", str(keras_path), "--base", str(base), *args])
        runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="__main__")
        return capsys.readouterr().out.strip().splitlines()[-1]

    meta_dir = run_script("--name", "sinusoid", "--checkpoint", str(tmp_path / "ckpt"), "--metadata", '{"preset": "test"}')
    adapted_dir = run_script("--name", "sinusoid_task5", "--checkpoint", str(tmp_path / "ckpt"),
                             "--adapt-support", str(tmp_path / "task.npz"), "--steps", "2")
    assert meta_dir == str(base / "sinusoid" / "1") and adapted_dir == str(base / "sinusoid_task5" / "1")
    meta = serving.read_metadata(meta_dir)
    assert meta["meta_steps_trained"] == 3 and meta["preset"] == "test" and meta["source_keras"] == str(keras_path)
    served = tf.saved_model.load(meta_dir).signatures["adapt_and_predict"]
    got = served(support_x=sx, support_y=sy, query_x=qx)["predictions"].numpy()
    np.testing.assert_allclose(got, adapted_reference(maml, sx, sy, qx, 3), atol=TOL, rtol=0)
    adapted = tf.saved_model.load(adapted_dir).signatures["serving_default"](inputs=qx)["predictions"].numpy()
    np.testing.assert_allclose(adapted, adapted_reference(maml, sx, sy, qx, 2), atol=TOL, rtol=0)
    plain = tmp_path / "plain.keras"
    maml.model.save(plain)
    with pytest.raises(TypeError, match="--steps apply only to a saved MAML"):
        serving.export_from_file(str(plain), str(base), "plain", steps=2)  # not silently ignored
    assert not (base / "plain").exists()
    np.savez(tmp_path / "flat.npz", x=sx)
    for args, says in [(("--steps", "-1"), "--steps: must be an integer >= 0"),
                       (("--adapt-support", str(tmp_path / "flat.npz")), r"lacks \['support_x', 'support_y'\]"),
                       (("--checkpoint", str(tmp_path / "nowhere")), "No checkpoint found"),
                       (("--metadata", "[1, 2]"), "--metadata must be a JSON object")]:
        with pytest.raises(SystemExit) as exit_info:
            run_script("--name", "bad", *args)
        assert exit_info.value.code == 2 and re.search(says, capsys.readouterr().err), says
    assert not (base / "bad").exists()


def test_source_paths_in_metadata_do_not_leak_the_training_machines_directories(tmp_path, monkeypatch):
    """A shipped export names its checkpoint as ``runs/...`` (portable), not as an absolute home path."""
    (tmp_path / "project" / "runs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    assert serving.source_path("runs/x/checkpoints") == os.path.join("runs", "x", "checkpoints")
    assert serving.source_path(str(tmp_path / "project" / "runs" / "x")) == os.path.join("runs", "x")
    assert serving.source_path("../elsewhere/model.keras") == str(tmp_path / "elsewhere" / "model.keras")
    for name in ("omniglot_5way1shot", "omniglot_5way5shot", "omniglot_20way1shot", "sinusoid"):
        meta = serving.read_metadata(str(REPO / "saved_models" / name))
        sources = [v for k, v in meta.items() if k.startswith("source_")]
        assert sources and not any(os.path.isabs(p) for p in sources), (name, sources)
