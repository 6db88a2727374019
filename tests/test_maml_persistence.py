"""Saving and reloading round-trips everything training needs; the step function is traced once."""

import keras
import numpy as np
import tensorflow as tf

from tf_maml import MAML
from tf_maml.data.sinusoid import sinusoid_episodes
from tf_maml.models.mlp import sinusoid_mlp


def make(learn_inner_lr=True):
    maml = MAML(sinusoid_mlp(seed=0), inner_lr=0.02, inner_steps=2, eval_inner_steps=7,
                learn_inner_lr=learn_inner_lr, adapt_layers=["hidden_1", "head"])
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
    return maml


def test_keras_file_round_trip_resumes_training_exactly(tmp_path):
    maml = make()
    maml.fit(sinusoid_episodes(5, 10, seed=0, steps=30), epochs=1, verbose=0)
    path = tmp_path / "maml.keras"
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MAML)
    assert loaded.get_config()["adapt_layers"] == ["hidden_1", "head"]
    assert (loaded.inner_steps, loaded.eval_inner_steps, loaded.learn_inner_lr) == (2, 7, True)
    assert int(loaded.optimizer.iterations) == int(maml.optimizer.iterations) == 30
    for a, b in zip(loaded.optimizer.variables, maml.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(loaded.weights, maml.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Continue both from step 30 on the same batches: identical weights afterwards.
    for m in (maml, loaded):
        m.fit(sinusoid_episodes(5, 10, seed=0, start_step=30, steps=20), epochs=1, verbose=0)
    for a, b in zip(loaded.weights, maml.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(loaded.optimizer.iterations) == 50


def test_tf_checkpoint_round_trip(tmp_path):
    maml = make()
    maml.fit(sinusoid_episodes(5, 10, seed=0, steps=10), epochs=1, verbose=0)
    ckpt = tf.train.Checkpoint(model=maml, optimizer=maml.optimizer)
    path = ckpt.save(str(tmp_path / "ckpt"))
    other = make()
    other.optimizer.build(other.trainable_variables)
    tf.train.Checkpoint(model=other, optimizer=other.optimizer).restore(path).assert_existing_objects_matched()
    for a, b in zip(other.weights, maml.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(other.optimizer.iterations) == 10


def test_train_step_is_traced_once_across_steps_and_fits(monkeypatch):
    traces = []
    original = MAML.train_step

    def counting(self, data):
        traces.append(1)  # Python side effect: runs only while tracing
        return original(self, data)

    monkeypatch.setattr(MAML, "train_step", counting)
    maml = make(learn_inner_lr=False)
    data = sinusoid_episodes(5, 10, seed=0)
    maml.fit(data, steps_per_epoch=25, epochs=2, verbose=0)
    maml.fit(data, steps_per_epoch=25, epochs=1, verbose=0)
    assert len(traces) == 1


def test_predictions_after_adaptation_retrace_only_for_new_step_sets():
    maml = make()
    data = iter(sinusoid_episodes(5, 10, seed=0))
    for _ in range(3):
        sx, sy, qx, _ = next(data)
        maml.predict_after_adaptation(sx, sy, qx, steps=(0, 1))
    fn = maml._prediction_fns[(0, 1)]
    assert fn.experimental_get_tracing_count() == 1
