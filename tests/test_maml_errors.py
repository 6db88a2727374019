"""Bad input fails early, says what was wrong and how to fix it, and loses nothing already saved."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import MAML, MetaLossNotFiniteError
from tf_maml.data.sinusoid import sample_sinusoid_tasks, sinusoid_episodes
from tf_maml.models.mlp import sinusoid_mlp


def compiled():
    maml = MAML(sinusoid_mlp(seed=0))
    maml.compile(optimizer="adam", loss="mse")
    return maml


def test_not_a_keras_model():
    with pytest.raises(TypeError, match="keras.Model"):
        MAML(lambda x: x)


def test_unbuilt_model_names_the_fix():
    with pytest.raises(ValueError, match="not built.*keras.Input"):
        MAML(keras.Sequential([keras.layers.Dense(1)]))


def test_model_without_trainable_weights():
    model = sinusoid_mlp()
    model.trainable = False
    with pytest.raises(ValueError, match="no trainable weights"):
        MAML(model)


@pytest.mark.parametrize("steps", [-1, 1.5])
def test_negative_inner_steps(steps):
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 0"):
        MAML(sinusoid_mlp(), inner_steps=steps)


def test_unknown_adapt_layer():
    with pytest.raises(ValueError, match="not layers of"):
        MAML(sinusoid_mlp(), adapt_layers=["nope"])


def test_mismatched_task_axes():
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([0, 1], 4, 10, 10)
    with pytest.raises(ValueError, match="task axes .* disagree"):
        compiled().meta_loss((sx, sy, qx[:3], qy[:3]))


def test_missing_task_axis():
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([0, 1], 4, 10, 10)
    with pytest.raises(ValueError, match="needs a task axis"):
        compiled().meta_loss((sx[0, :, 0], sy, qx, qy))


def test_mismatched_example_counts():
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([0, 1], 4, 10, 10)
    with pytest.raises(ValueError, match="support_x has 10 examples per task but support_y has 5"):
        compiled().meta_loss((sx, sy[:, :5], qx, qy))


def test_not_a_4_tuple():
    with pytest.raises(ValueError, match="4-tuple"):
        compiled().meta_loss((np.zeros((2, 3, 1)), np.zeros((2, 3, 1))))


def test_uncompiled_meta_learner():
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([0, 1], 2, 5, 5)
    with pytest.raises(RuntimeError, match="compile"):
        MAML(sinusoid_mlp()).predict_after_adaptation(sx, sy, qx)


def test_nan_meta_loss_stops_names_step_and_keeps_checkpoint(tmp_path):
    maml = compiled()
    ckpt = tmp_path / "last.keras"
    clean = sinusoid_episodes(5, 10, seed=0, steps=6)

    def poison(i, batch):
        sx, sy, qx, qy = batch
        qy = tf.where(i == 3, qy * np.nan, qy)
        return sx, sy, qx, qy

    dirty = sinusoid_episodes(5, 10, seed=1, steps=6).enumerate().map(poison)
    maml.fit(clean, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(ckpt)])
    saved = ckpt.read_bytes()
    with pytest.raises(MetaLossNotFiniteError, match=r"meta-step.*9.*checkpoints already written are intact"):
        maml.fit(dirty, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(ckpt)])
    assert ckpt.read_bytes() == saved
    assert all(np.isfinite(w).all() for w in maml.model.get_weights())
    assert int(maml.optimizer.iterations) == 9
