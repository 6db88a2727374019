"""Bad input fails early, says what was wrong and how to fix it, and loses nothing already saved."""

import re

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


@pytest.mark.parametrize("kwargs, error, message", [
    ({"first_order": "no"}, ValueError, "first_order must be True or False"),
    ({"adapt_layers": "head"}, TypeError, r"a list of layer names, e.g. \['head'\]"),
    ({"inner_lr": "0.1"}, ValueError, "inner_lr must be a finite number > 0"),
    ({"inner_lr": float("inf")}, ValueError, "finite number > 0"),
    ({"inner_steps": True}, ValueError, "inner_steps must be an integer"),
])
def test_arguments_of_the_wrong_kind_are_not_coerced(kwargs, error, message):
    with pytest.raises(error, match=message):
        MAML(sinusoid_mlp(), **kwargs)


def test_examples_that_do_not_fit_the_model_input_are_named():
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([0, 1], 2, 5, 4)
    wide = [tf.tile(t, [1, 1, 3]) for t in (sx, qx)]
    with pytest.raises(ValueError, match=r"examples have shape \(3,\) but model .* inputs of shape \(1,\)"):
        compiled().meta_loss((wide[0], sy, wide[1], qy))
    with pytest.raises(ValueError, match=r"examples have shape \(3,\)"):
        compiled().adapt(wide[0][0], sy[0])


def test_episodes_without_query_examples_are_named():
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([0, 1], 2, 5, 4)
    with pytest.raises(ValueError, match=r"no query examples .*queries >= 1"):
        compiled().meta_loss((sx, sy, qx[:, :0], qy[:, :0]))


def test_labels_that_would_broadcast_against_the_output_are_named():
    (sx, sy, qx, qy), _ = sample_sinusoid_tasks([0, 1], 2, 5, 4)
    maml = compiled()
    wide_q, wide_s = tf.tile(qy, [1, 1, 2]), tf.tile(sy, [1, 1, 2])
    with pytest.raises(ValueError, match=r"query labels have shape \(2,\) per example but .* outputs shape \(1,\)"):
        maml.meta_loss((sx, sy, qx, wide_q))
    with pytest.raises(ValueError, match=r"support labels have shape \(2,\)"):
        maml.adapt(sx[0], wide_s[0])
    with pytest.raises(ValueError, match=r"support labels have shape \(2,\)"):
        maml.predict_after_adaptation(sx, wide_s, qx)
    # labels without the trailing unit axis are what Keras losses squeeze or expand: still accepted
    assert np.isfinite(maml.meta_loss((sx, sy[..., 0], qx, qy[..., 0])).numpy())


def test_sparse_and_one_hot_labels_both_pass_the_label_check():
    inputs = keras.Input((3,))
    maml = MAML(keras.Model(inputs, keras.layers.Dense(4)(inputs)))
    x = tf.random.normal([2, 5, 3])
    sparse = tf.random.uniform([2, 5], maxval=4, dtype=tf.int32)
    maml.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(maml.meta_loss((x, sparse, x, sparse)).numpy())
    assert np.isfinite(maml.meta_loss((x, sparse[..., None], x, sparse[..., None])).numpy())
    one_hot = tf.one_hot(sparse, 4)
    maml.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    assert np.isfinite(maml.meta_loss((x, one_hot, x, one_hot)).numpy())
    with pytest.raises(ValueError, match=r"query labels have shape \(3,\)"):
        maml.meta_loss((x, one_hot, x, one_hot[..., :3]))


def _packed_loss(y, pred):  # a user's loss: labels carry a weight column beside the target
    return tf.reduce_mean((y[..., :1] - pred) ** 2 * y[..., 1:])


@pytest.mark.parametrize("output, loss, labels, accepted", [
    ((1,), "mse", (1,), True),
    ((1,), "mse", (), True),  # Keras' losses add the unit axis
    ((1,), "mse", (2,), False),
    ((2,), "mse", (1,), False),  # the mirror case broadcasts as well
    ((2,), "mse", (), False),
    ((4,), "sparse_categorical_crossentropy", (), True),
    ((4,), keras.losses.SparseCategoricalCrossentropy(from_logits=True), (1,), True),
    ((4,), keras.losses.SparseCategoricalCrossentropy(), (4,), False),
    ((4,), keras.losses.CategoricalCrossentropy(), (4,), True),
    ((4,), keras.losses.CategoricalCrossentropy(), (), False),  # class ids given to a one-hot loss
    ((1,), keras.losses.BinaryCrossentropy(), (), True),
    ((5, 5), "mse", (5, 5, 1), True),
    ((5, 5, 1), "binary_crossentropy", (5, 5), True),
    ((5, 5, 3), keras.losses.SparseCategoricalCrossentropy(), (5, 5), True),  # per-pixel classes
    ((5, 5, 3), "mse", (1, 5, 3), False),
    ((1,), _packed_loss, (2,), True),  # the user's own loss reads its labels as it likes: not checked
    ((1,), keras.losses.Huber(), (2,), False),
])
def test_label_shapes_are_checked_as_the_loss_reads_them(output, loss, labels, accepted):
    from tf_maml.maml import _check_label_shape

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Reshape(output)(keras.layers.Dense(int(np.prod(output)))(inputs)))
    check = lambda: _check_label_shape(model, keras.losses.get(loss), tf.TensorShape(labels), "labels")  # noqa: E731
    if accepted:
        check()
    else:
        with pytest.raises(ValueError, match=rf"labels have shape {re.escape(str(labels))} per example .* outputs shape"):
            check()


def test_multi_output_model_is_refused_at_construction():
    inputs = keras.Input((1,))
    model = keras.Model(inputs, [keras.layers.Dense(1)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match="2 outputs.*single-output"):
        MAML(model)


def test_one_task_methods_check_their_input():
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([0, 1], 2, 5, 4)
    maml = compiled()
    with pytest.raises(ValueError, match="ONE task without the task axis"):
        maml.adapt(sx, sy)
    with pytest.raises(ValueError, match="support_x has 5 examples per task but support_y has 4"):
        maml.adapted_predictions(sx[0], sy[0, :4], qx[0])
    with pytest.raises(ValueError, match="steps must be an integer"):
        maml.adapt(sx[0], sy[0], steps=2.7)
    with pytest.raises(ValueError, match="names no step count"):
        maml.predict_after_adaptation(sx, sy, qx, steps=())
    # plain Python lists are fine
    listed = maml.adapt(sx[0].numpy().tolist(), sy[0].numpy().tolist(), steps=1)
    np.testing.assert_allclose(listed(qx[0]).numpy(), maml.adapt(sx[0], sy[0], steps=1)(qx[0]).numpy(), atol=1e-6)


def test_setting_inner_lr_reaches_the_inner_loop():
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([0, 1], 1, 5, 4)
    maml = compiled()
    maml.inner_lr = 0.5
    fresh = MAML(sinusoid_mlp(seed=0), inner_lr=0.5)
    fresh.compile(optimizer="adam", loss="mse")
    np.testing.assert_allclose(maml.adapted_predictions(sx[0], sy[0], qx[0], steps=1).numpy(),
                               fresh.adapted_predictions(sx[0], sy[0], qx[0], steps=1).numpy(), atol=1e-6)
    assert maml.get_config()["inner_lr"] == 0.5
    learned = MAML(sinusoid_mlp(seed=0), learn_inner_lr=True)
    with pytest.raises(AttributeError, match="maml.inner_lrs"):
        learned.inner_lr = 0.5


def test_pretraining_for_zero_steps_is_refused_not_endless():
    from tf_maml.baselines import pretrain_on_all_tasks

    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        pretrain_on_all_tasks(sinusoid_mlp(), sinusoid_episodes(2, 5, seed=0), 0)
