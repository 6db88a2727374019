"""Meta-training really happens, adaptation is plain SGD, and the knobs do what they say."""

import keras
import numpy as np
import tensorflow as tf

from tf_maml import MAML
from tf_maml.baselines import pretrain_on_all_tasks
from tf_maml.data.sinusoid import sample_sinusoid_tasks, sinusoid_episodes
from tf_maml.evaluation import scores_after_adaptation, task_mse
from tf_maml.models.mlp import sinusoid_mlp


def test_meta_training_beats_pretrained_baseline_on_sinusoids():
    steps = 2500
    maml = MAML(sinusoid_mlp(seed=1), inner_lr=0.01, inner_steps=1, eval_inner_steps=10)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", steps_per_execution=50)
    maml.fit(sinusoid_episodes(25, 10, seed=1), steps_per_epoch=steps, epochs=1, verbose=0)
    baseline = pretrain_on_all_tasks(sinusoid_mlp(seed=1), sinusoid_episodes(25, 10, seed=1), steps)
    baseline_maml = MAML(baseline, inner_lr=0.01)
    baseline_maml.compile(loss="mse")
    test = sinusoid_episodes(50, 10, seed=99)
    ours = scores_after_adaptation(maml, test, (0, 1, 10), task_mse, tasks=200)
    theirs = scores_after_adaptation(baseline_maml, test, (0, 1, 10), task_mse, tasks=200)
    # Pre-adaptation MSE is around the variance of the sinusoids (~4); adaptation must cut it far down.
    assert ours[10].mean() < 0.35 * ours[0].mean(), (ours[0].mean(), ours[10].mean())
    assert ours[1].mean() < ours[0].mean()
    assert ours[10].mean() < 0.7 * theirs[10].mean(), (ours[10].mean(), theirs[10].mean())


def test_adapt_returns_model_with_one_hand_written_sgd_step():
    model = sinusoid_mlp(seed=2)
    maml = MAML(model, inner_lr=0.05, eval_inner_steps=1)
    maml.compile(optimizer="adam", loss="mse")
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([1, 2], 1, 10, 5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(sx[0]) - sy[0]))
    grads = tape.gradient(loss, model.trainable_variables)
    expected = [v.numpy() - 0.05 * g.numpy() for v, g in zip(model.trainable_variables, grads)]
    adapted = maml.adapt(sx[0], sy[0], steps=1)
    assert isinstance(adapted, keras.Model)
    for got, want in zip(adapted.trainable_variables, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    manual = keras.Model.from_config(model.get_config())
    manual.set_weights(expected)
    np.testing.assert_allclose(adapted.predict(qx[0], verbose=0), manual.predict(qx[0], verbose=0), atol=1e-5)
    # θ itself is untouched, and adapt agrees with the batched prediction path.
    np.testing.assert_allclose(model.get_weights()[0], maml.model.get_weights()[0])
    batched = maml.predict_after_adaptation(sx, sy, qx, steps=(1,))[0, 0]
    np.testing.assert_allclose(batched, adapted.predict(qx[0], verbose=0), atol=1e-5)


def test_meta_sgd_rates_change_during_meta_training():
    maml = MAML(sinusoid_mlp(seed=3), inner_lr=0.01, learn_inner_lr=True)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    before = [lr.numpy().copy() for lr in maml.inner_lrs]
    assert all(lr.shape == v.shape for lr, v in zip(maml.inner_lrs, maml.model.trainable_variables))
    maml.fit(sinusoid_episodes(25, 10, seed=3), steps_per_epoch=20, epochs=1, verbose=0)
    changed = [np.abs(lr.numpy() - b).max() for lr, b in zip(maml.inner_lrs, before)]
    assert min(changed) > 1e-5, changed


def test_frozen_layers_stay_at_theta_in_the_inner_loop():
    model = sinusoid_mlp(seed=4)
    maml = MAML(model, inner_lr=0.1, adapt_layers=["head"], eval_inner_steps=5)
    maml.compile(optimizer="adam", loss="mse")
    (sx, sy, _, _), _ = sample_sinusoid_tasks([5, 6], 1, 10, 10)
    adapted = maml.adapt(sx[0], sy[0])
    for layer in ("hidden_0", "hidden_1"):
        for a, b in zip(adapted.get_layer(layer).get_weights(), model.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert np.abs(adapted.get_layer("head").get_weights()[0] - model.get_layer("head").get_weights()[0]).max() > 1e-4
    assert sum(lr is not None for lr in maml.inner_lrs) == 2


def test_zero_inner_steps_is_plain_training_on_the_query_set():
    maml = MAML(sinusoid_mlp(seed=5), inner_steps=0)
    maml.compile(optimizer="adam", loss="mse")
    batch, _ = sample_sinusoid_tasks([7, 8], 4, 10, 10)
    pred = maml.predict_after_adaptation(*batch[:3], steps=(0,))[0]
    np.testing.assert_allclose(pred, maml.model.predict(tf.reshape(batch[2], [-1, 1]), verbose=0).reshape(4, 10, 1), atol=1e-5)


def test_running_batch_norm_statistics_update_only_in_running_mode():
    def bn_model():
        inputs = keras.Input(shape=(1,))
        h = keras.layers.Dense(8)(inputs)
        h = keras.layers.BatchNormalization(name="bn")(h)
        return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.ReLU()(h)))

    data = sinusoid_episodes(4, 10, seed=1)
    for mode, should_change in (("transductive", False), ("running", True)):
        model = bn_model()
        maml = MAML(model, batch_norm=mode)
        maml.compile(optimizer="adam", loss="mse")
        before = model.get_layer("bn").moving_mean.numpy().copy()
        maml.fit(data, steps_per_epoch=3, verbose=0)
        moved = np.abs(model.get_layer("bn").moving_mean.numpy() - before).max()
        assert (moved > 0) == should_change, (mode, moved)
