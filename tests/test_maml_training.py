"""Meta-training really happens, adaptation is plain SGD, and the knobs do what they say."""

import keras
import numpy as np
import pytest
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
    maml.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    batch, _ = sample_sinusoid_tasks([7, 8], 4, 10, 10)
    qx, qy = tf.reshape(batch[2], [-1, 1]), tf.reshape(batch[3], [-1, 1])
    theta = [v.numpy() for v in maml.model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(maml.model(qx) - qy))
    grads = tape.gradient(loss, maml.model.trainable_variables)
    maml.fit(tf.data.Dataset.from_tensors(tuple(batch)), verbose=0)
    for v, t, g in zip(maml.model.trainable_variables, theta, grads):
        np.testing.assert_allclose(v.numpy(), t - 0.1 * g.numpy(), atol=1e-6)


def bn_model(dropout: float = 0.0, batch_norm: bool = True) -> keras.Model:
    inputs = keras.Input(shape=(1,))
    h = keras.layers.Dense(8)(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(dropout)(keras.layers.ReLU()(h))
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def test_predict_uses_the_batch_statistics_that_evaluation_and_serving_use():
    """Transductive BN: ``maml.predict`` (θ, no adaptation) equals the 0-step prediction of evaluation, and
    leaves the moving statistics alone; a model without batch norm predicts in inference mode (no dropout)."""
    maml = MAML(bn_model(), batch_norm="transductive")
    maml.compile(optimizer="adam", loss="mse")
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([9, 1], 1, 10, 10)
    before = maml.model.get_layer("bn").moving_mean.numpy().copy()
    got = maml.predict(qx[0].numpy() * 3.0 + 1.0, verbose=0)
    want = maml.predict_after_adaptation(sx, sy, qx * 3.0 + 1.0, steps=(0,))[0, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, maml.model(qx[0] * 3.0 + 1.0, training=False), atol=1e-3)  # not the 0/1 stats
    np.testing.assert_array_equal(maml.model.get_layer("bn").moving_mean.numpy(), before)

    dropout = MAML(bn_model(dropout=0.5, batch_norm=False))
    dropout.compile(optimizer="adam", loss="mse")
    assert not dropout.batch_statistics_at_inference
    first = dropout.predict_after_adaptation(sx, sy, qx, steps=(0, 1))
    np.testing.assert_array_equal(first, dropout.predict_after_adaptation(sx, sy, qx, steps=(0, 1)))
    np.testing.assert_allclose(first[0, 0], dropout.model(qx[0], training=False), atol=1e-5)


def test_running_batch_norm_statistics_update_only_in_running_mode():
    data = sinusoid_episodes(4, 10, seed=1)
    for mode, should_change in (("transductive", False), ("running", True)):
        model = bn_model()
        maml = MAML(model, batch_norm=mode)
        maml.compile(optimizer="adam", loss="mse")
        before = model.get_layer("bn").moving_mean.numpy().copy()
        maml.fit(data, steps_per_epoch=3, verbose=0)
        moved = np.abs(model.get_layer("bn").moving_mean.numpy() - before).max()
        assert (moved > 0) == should_change, (mode, moved)


def test_scores_cover_distinct_tasks_even_when_a_step_count_repeats():
    maml = MAML(sinusoid_mlp(seed=2), inner_lr=0.01)
    maml.compile(loss="mse")
    test = sinusoid_episodes(5, 10, seed=3)
    once = scores_after_adaptation(maml, test, (0, 1), task_mse, tasks=10)
    twice = scores_after_adaptation(maml, test, (1, 0, 1), task_mse, tasks=10)
    assert sorted(twice) == [0, 1]
    for s in (0, 1):
        assert len(np.unique(twice[s])) == 10  # ten different tasks, none counted twice
        np.testing.assert_allclose(twice[s], once[s], rtol=1e-6)


def test_fit_on_an_episode_dataset_does_not_warn_about_shuffling(recwarn):
    """Episodes come sampled at random; Keras' default ``shuffle=True`` would only produce a warning."""
    maml = MAML(sinusoid_mlp(seed=1), inner_lr=0.01)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    maml.fit(sinusoid_episodes(4, 5, seed=1), steps_per_epoch=2, epochs=1, verbose=0)
    pretrain_on_all_tasks(sinusoid_mlp(seed=1), sinusoid_episodes(4, 5, seed=1), 2)  # the baseline's plain fit
    assert not [w for w in recwarn if "shuffle" in str(w.message)]


def test_adapted_model_predicts_a_task_as_one_batch_and_reloads(tmp_path):
    """Transductive BN: Keras' predict batches by 32, which would normalise 40 queries with the statistics
    of 32 and 8; the adapted model (and MAML.predict) take the whole input unless told otherwise."""
    maml = MAML(bn_model(), inner_lr=0.05, batch_norm="transductive")
    maml.compile(optimizer="adam", loss="mse")
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([4, 2], 1, 10, 40)
    adapted = maml.adapt(sx[0], sy[0], steps=2)
    want = maml.adapted_predictions(sx[0], sy[0], qx[0], steps=2).numpy()
    np.testing.assert_allclose(adapted.predict(qx[0].numpy(), verbose=0), want, atol=1e-5)
    split = adapted.predict(qx[0].numpy(), batch_size=32, verbose=0)
    assert not np.allclose(split, want, atol=1e-3)  # what the default batching would have given
    np.testing.assert_allclose(maml.predict(qx[0].numpy(), verbose=0), maml(qx[0]).numpy(), atol=1e-5)
    path = str(tmp_path / "adapted.keras")
    adapted.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(qx[0].numpy(), verbose=0), want, atol=1e-5)


class SubclassedRegressor(keras.Model):
    """A subclassed model whose ``call`` takes no ``training`` argument."""

    def __init__(self, units: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_model_trains_and_adapts():
    model = SubclassedRegressor()
    model(np.zeros((1, 1), np.float32))
    maml = MAML(model, inner_lr=0.01)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    maml.fit(sinusoid_episodes(4, 5, seed=1), steps_per_epoch=3, epochs=1, verbose=0)
    (sx, sy, qx, _), _ = sample_sinusoid_tasks([3, 1], 1, 5, 6)
    adapted = maml.adapt(sx[0], sy[0], steps=1)
    assert isinstance(adapted, SubclassedRegressor)
    np.testing.assert_allclose(adapted(qx[0]).numpy(), maml.adapted_predictions(sx[0], sy[0], qx[0], steps=1).numpy(),
                               atol=1e-5)
    assert not np.allclose(adapted(qx[0]).numpy(), maml(qx[0]).numpy(), atol=1e-4)  # it did adapt


def test_an_ensemble_scores_the_mean_of_its_members_adapted_predictions():
    """MAML++'s evaluation: each member adapts to the task on its own; their query predictions are averaged."""
    members = []
    for seed, lr in ((2, 0.01), (5, 0.1)):
        maml = MAML(sinusoid_mlp(seed=seed), inner_lr=lr)
        maml.compile(loss="mse")
        members.append(maml)
    test = sinusoid_episodes(5, 10, seed=3)
    sx, sy, qx, qy = next(iter(test))
    each = [m.predict_after_adaptation(sx, sy, qx, steps=(0, 1)) for m in members]
    assert np.abs(each[0] - each[1]).max() > 1e-2  # two different learners, so the mean is not either one
    first_query = lambda pred, y: pred[:, 0, 0]  # noqa: E731  (a "score" that reveals the scored prediction)
    scored = scores_after_adaptation(members, test, (0, 1), first_query, tasks=5)
    for i, s in enumerate((0, 1)):
        np.testing.assert_allclose(scored[s], (each[0][i] + each[1][i])[:, 0, 0] / 2, rtol=1e-5, atol=1e-6)
    alone = scores_after_adaptation(members[:1], test, (1,), task_mse, tasks=5)[1]  # one member: itself
    np.testing.assert_allclose(alone, task_mse(each[0][1], qy.numpy()), rtol=1e-5)
    with pytest.raises(ValueError, match="empty ensemble"):
        scores_after_adaptation([], test, (1,), task_mse, tasks=5)
    with pytest.raises(TypeError, match="a meta-learner .* got .*Dataset"):
        scores_after_adaptation(test, test, (1,), task_mse, tasks=5)
