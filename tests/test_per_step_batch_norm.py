"""MAML++'s per-step batch-norm weights (``per_step_batch_norm=True``): which copy each step uses, exact
meta-gradients for θ and every copy, training, persistence, ``adapt`` and export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import MAML, serving
from tf_maml.data.sinusoid import sample_sinusoid_tasks
from tf_maml.models.fused_batch_norm import FusedBatchNormalization


def bn_model(batch_norm_layer=FusedBatchNormalization):
    # FusedBatchNormalization: Keras' own layer stops a gradient inside the variance, which finite
    # differences of a second-order meta-gradient would (rightly) catch.
    inputs = keras.Input(shape=(1,), dtype="float64")
    h = keras.layers.Dense(4, dtype="float64", name="hidden")(inputs)
    h = batch_norm_layer(dtype="float64", name="bn")(h)
    h = keras.layers.Activation("tanh", dtype="float64")(h)
    return keras.Model(inputs, keras.layers.Dense(1, dtype="float64", name="head")(h))


def episode(tasks=2, shots=5, seed=(3, 4)):
    batch, _ = sample_sinusoid_tasks(list(seed), tasks, shots, shots, dtype=tf.float64)
    return batch


def compiled(**kwargs):
    keras.utils.set_random_seed(0)
    maml = MAML(bn_model(), per_step_batch_norm=True, **kwargs)
    maml.compile(optimizer="sgd", loss="mse")
    return maml


def copy_of(maml, weight_path):
    """The per-step copies of the model weight at ``weight_path`` (e.g. "bn/gamma")."""
    paths = [v.path for v in maml.model.trainable_variables]
    return maml.batch_norm_step_weights[paths.index(weight_path)]


def distinct_copies(maml, seed=1):
    """Give every step's γ, β its own values, so that using the wrong copy shows."""
    rng = np.random.default_rng(seed)
    for w in maml.batch_norm_step_weights:
        if w is not None:
            w.assign(w.numpy() + rng.normal(0, 0.5, w.shape))


def by_hand(maml, sx, sy, qx, steps):
    """Query predictions after 0..steps inner steps of ONE task, written out without the library's loop."""
    model = maml.model
    names = [v.path for v in model.trainable_variables]
    copies = {i: w.numpy() for i, w in enumerate(maml.batch_norm_step_weights) if w is not None}
    non_trainable = [v.numpy() for v in model.non_trainable_variables]

    def with_step_bn(params, k):
        return [tf.constant(copies[i][min(k, maml.inner_steps) - 1]) if (k and i in copies) else p
                for i, p in enumerate(params)]

    def forward(params, x):
        return model.stateless_call(params, non_trainable, x, training=True)[0]

    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    preds = [forward(params, qx).numpy()]
    for k in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = tf.reduce_mean(tf.square(forward(params, sx) - sy))
        grads = tape.gradient(loss, params)
        params = [p if "bn/" in name else p - maml.inner_lr * g for p, g, name in zip(params, grads, names)]
        params = with_step_bn(params, k + 1)
        preds.append(forward(params, qx).numpy())
    return preds


def test_each_step_uses_its_own_copy_and_steps_beyond_reuse_the_last():
    maml = compiled(inner_lr=0.1, inner_steps=2)
    assert [w.shape for w in maml.batch_norm_step_weights if w is not None] == [(2, 4), (2, 4)]
    np.testing.assert_array_equal(copy_of(maml, "bn/gamma").numpy(), np.ones((2, 4)))  # start: θ's γ
    distinct_copies(maml)
    sx, sy, qx, _ = episode()
    got = maml.predict_after_adaptation(sx, sy, qx, steps=(0, 1, 2, 3))
    for t in range(2):
        expected = by_hand(maml, sx[t], sy[t], qx[t], 3)
        np.testing.assert_allclose(got[:, t], np.stack(expected), rtol=1e-10, atol=1e-12)
    # The copies matter: with shared γ, β (plain MAML at the same θ) the adapted predictions differ.
    plain = MAML(maml.model, inner_lr=0.1, inner_steps=2)
    plain.compile(optimizer="sgd", loss="mse")
    assert not np.allclose(plain.predict_after_adaptation(sx, sy, qx, steps=(1,))[0], got[1])


def test_batch_norm_weights_are_not_adapted_in_the_inner_loop():
    maml = compiled(inner_lr=0.1, inner_steps=1, learn_inner_lr=True)
    for var, rate, copy in zip(maml.model.trainable_variables, maml.inner_lrs, maml.batch_norm_step_weights):
        assert (rate is None) == (copy is not None), var.path


@pytest.mark.parametrize("task_execution,recompute,rates", [
    ("vectorized", False, False), ("loop", False, False), ("map", True, False), ("vectorized", True, "per_step")])
def test_meta_gradients_of_theta_and_every_copy_match_finite_differences(task_execution, recompute, rates,
                                                                           central_differences):
    maml = compiled(inner_lr=0.1, inner_steps=2, multi_step_loss=10, task_execution=task_execution,
                    recompute_inner_loop=recompute, learn_inner_lr=rates)
    maml.optimizer.iterations.assign(3)  # both steps' query losses weigh in
    distinct_copies(maml)
    batch = episode()
    loss = tf.function(lambda: maml.meta_loss(batch))  # traced once: the differences call it ~200 times

    @tf.function
    def meta_gradients():
        with tf.GradientTape() as tape:
            value = loss()
        return tape.gradient(value, maml.trainable_variables)

    analytic = meta_gradients()
    numeric = central_differences(loss, maml.trainable_variables)
    for var, a, n in zip(maml.trainable_variables, analytic, numeric):
        np.testing.assert_allclose(a.numpy(), n, rtol=1e-5, atol=1e-8, err_msg=var.path)
    for copy in maml.batch_norm_step_weights:
        if copy is not None:  # each step's copy gets a gradient of its own
            grad = numeric[[v.path for v in maml.trainable_variables].index(copy.path)]
            assert np.all(np.abs(grad).sum(axis=1) > 0), copy.path


def test_first_order_meta_gradients_reach_only_what_the_queries_use():
    """Documented: in first order a weight used only in support passes gets no meta-gradient."""
    batch = episode()
    with pytest.warns(UserWarning, match="will not train"):
        first_order = compiled(inner_lr=0.1, inner_steps=3, first_order=True)

    def gradient_norms(maml):
        with tf.GradientTape() as tape:
            loss = maml.meta_loss(batch)
        grads = dict(zip([v.path for v in maml.trainable_variables], tape.gradient(loss, maml.trainable_variables)))
        own = [0.0 if grads[p] is None else float(tf.norm(grads[p])) for p in ("bn/gamma", "bn/beta")]
        per_step = tf.norm(grads[copy_of(maml, "bn/gamma").path], axis=1).numpy()
        return own, per_step

    own, per_step = gradient_norms(first_order)
    assert own == [0.0, 0.0] and per_step[0] == per_step[1] == 0 and per_step[2] > 0
    with pytest.warns(UserWarning, match="will not train"):
        with_msl = MAML(first_order.model, inner_lr=0.1, inner_steps=3, first_order=True, per_step_batch_norm=True,
                        multi_step_loss=10)
    with_msl.compile(optimizer="sgd", loss="mse")  # meta-step 0: every step's query loss weighs in
    own, per_step = gradient_norms(with_msl)
    assert own == [0.0, 0.0] and np.all(per_step > 0)
    second_order = compiled(inner_lr=0.1, inner_steps=3)
    own, per_step = gradient_norms(second_order)
    assert min(own) > 0 and np.all(per_step > 0)


def test_trains_saves_reloads_adapts_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    maml = MAML(bn_model(), inner_lr=0.05, inner_steps=2, per_step_batch_norm=True, multi_step_loss=5,
                task_execution="loop")
    maml.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    copies = [w for w in maml.batch_norm_step_weights if w is not None]
    before = [w.numpy().copy() for w in copies]
    data = tf.data.Dataset.from_tensor_slices(tuple(episode(tasks=40))).batch(4, drop_remainder=True).repeat()
    maml.fit(data, steps_per_epoch=10, epochs=1, verbose=0)
    for w, b in zip(copies, before):
        moved = w.numpy() - b
        assert np.all(np.abs(moved) > 0) and not np.allclose(moved[0], moved[1]), w.path  # trained, per step

    path = str(tmp_path / "m.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.per_step_batch_norm and loaded.get_config()["per_step_batch_norm"]
    for a, b in zip(loaded.batch_norm_step_weights, maml.batch_norm_step_weights):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    batch = episode(seed=(7, 8))
    np.testing.assert_allclose(loaded.meta_loss(batch, training=False), maml.meta_loss(batch, training=False))

    # adapt() carries the copy of the steps taken; its predictions are the adapted predictions.
    sx, sy, qx, _ = (t[0] for t in batch)
    adapted = maml.adapt(sx, sy, steps=2)
    np.testing.assert_array_equal(adapted.get_layer("bn").gamma.numpy(), copy_of(maml, "bn/gamma").numpy()[1])
    expected = maml.adapted_predictions(sx, sy, qx, steps=2).numpy()
    np.testing.assert_allclose(adapted.predict(qx, verbose=0), expected, rtol=1e-6)  # Keras BN in the copy

    version_dir = serving.export_meta_learner(maml, str(tmp_path / "serving"), "psbn")
    assert serving.read_metadata(version_dir)["per_step_batch_norm"] is True
    reloaded = tf.saved_model.load(version_dir)
    served = reloaded.signatures["adapt_and_predict"](
        support_x=sx, support_y=sy, query_x=qx)["predictions"].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-8)


@pytest.mark.parametrize("kwargs,match", [
    ({"per_step_batch_norm": 1}, "per_step_batch_norm must be True or False, got 1"),
    ({"inner_steps": 0}, "per_step_batch_norm learns one copy of γ, β per inner step, so it needs inner_steps >= 1"),
    ({"adapt_layers": ["bn"]}, "nothing would adapt"),
])
def test_bad_per_step_batch_norm_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAML(bn_model(), **{"per_step_batch_norm": True, **kwargs})


def test_a_model_without_trainable_batch_norm_weights_is_refused_by_name():
    inputs = keras.Input(shape=(1,))
    no_bn = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="has no BatchNormalization layer with trainable scale or center"):
        MAML(no_bn, per_step_batch_norm=True)
    frozen = bn_model(lambda **kw: keras.layers.BatchNormalization(center=False, scale=False, **kw))
    with pytest.raises(ValueError, match="BatchNormalization layer with trainable scale"):
        MAML(frozen, per_step_batch_norm=True)


def test_a_run_continues_from_its_export_with_every_copy_exactly(tmp_path):
    """``train_omniglot.py --init-from`` on a per-step run: the copies and their Adam state travel in the export."""
    from tf_maml.training import fit_resumable, read_budget, start_from_export

    def fresh():
        keras.utils.set_random_seed(0)
        maml = MAML(bn_model(), inner_lr=0.05, inner_steps=2, per_step_batch_norm=True, task_execution="loop")
        maml.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return maml

    tasks = tf.data.Dataset.from_tensor_slices(tuple(episode(tasks=80))).batch(4, drop_remainder=True).repeat()
    data = lambda start: tasks.skip(start)  # noqa: E731  (a step-indexed episode stream)
    straight = fresh()
    fit_resumable(straight, data, 20, 10, str(tmp_path / "straight"), verbose=0)
    first = fresh()
    fit_resumable(first, data, 10, 10, str(tmp_path / "first"), verbose=0)
    export = serving.export_meta_learner(first, str(tmp_path / "models"), "psbn",
                                         metadata={"training": read_budget(str(tmp_path / "first" / "budget.json"))})
    continued = fresh()
    assert start_from_export(continued, export, str(tmp_path / "elsewhere")) == 10
    np.testing.assert_array_equal(copy_of(continued, "bn/gamma").numpy(), copy_of(first, "bn/gamma").numpy())
    fit_resumable(continued, data, 20, 10, str(tmp_path / "elsewhere"), verbose=0)
    moved = copy_of(continued, "bn/gamma").numpy() - copy_of(first, "bn/gamma").numpy()
    assert np.all(np.abs(moved) > 0)
    for a, b in zip(continued.weights, straight.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
