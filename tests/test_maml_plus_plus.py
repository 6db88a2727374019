"""MAML++'s multi-step loss, per-step learned inner rates (LSLR) and derivative-order annealing: exact
gradients, schedules, persistence."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import MAML
from tf_maml.data.sinusoid import sample_sinusoid_tasks


def tiny_model():
    inputs = keras.Input(shape=(1,), dtype="float64")
    h = keras.layers.Dense(3, activation="tanh", dtype="float64", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, dtype="float64", name="head")(h))


def episode(tasks=2, shots=4, seed=(3, 4)):
    batch, _ = sample_sinusoid_tasks(list(seed), tasks, shots, shots, dtype=tf.float64)
    return batch


def compiled(**kwargs):
    maml = MAML(tiny_model(), **kwargs)
    maml.compile(optimizer="sgd", loss="mse")
    return maml


def test_step_weights_anneal_from_uniform_to_the_last_step():
    maml = compiled(inner_steps=4, multi_step_loss=100)
    np.testing.assert_allclose(maml.step_loss_weights(0).numpy(), [0.25] * 4)
    np.testing.assert_allclose(maml.step_loss_weights(50).numpy(), [0.125, 0.125, 0.125, 0.625])
    for late in (100, 1000):
        np.testing.assert_allclose(maml.step_loss_weights(late).numpy(), [0, 0, 0, 1])
    np.testing.assert_allclose(compiled(inner_steps=4).step_loss_weights(0).numpy(), [0, 0, 0, 1])  # off: MAML's


def test_multi_step_loss_follows_the_loss_dtype_under_mixed_precision():
    inputs = keras.Input(shape=(1,))
    h = keras.layers.Dense(8, activation="tanh", dtype="mixed_float16")(inputs)
    out = keras.layers.Dense(1, dtype="mixed_float16")(h)
    batch = tuple(tf.cast(t, tf.float32) for t in episode())
    losses = []
    # The query loss after 1 and after 2 steps, then the multi-step loss, whose weights at meta-step 0 are
    # uniform: half of each. The layers are shared, so every MAML starts from the same θ.
    for steps, option in ((1, 0), (2, 0), (2, 10)):
        maml = MAML(keras.Model(inputs, out), inner_lr=0.01, inner_steps=steps, multi_step_loss=option)
        maml.compile(optimizer="sgd", loss="mse")
        with tf.GradientTape() as tape:
            losses.append(maml.meta_loss(batch))
        assert all(g is not None for g in tape.gradient(losses[-1], maml.model.trainable_variables))
    assert all(loss.dtype == tf.float16 for loss in losses)
    after_one, after_two, weighted = (float(loss) for loss in losses)
    assert after_one != after_two  # the weighting is seen
    np.testing.assert_allclose(weighted, 0.5 * after_one + 0.5 * after_two, rtol=1e-2)  # float16's precision


def test_multi_step_loss_is_the_weighted_query_loss_of_every_step():
    steps = 3
    maml = compiled(inner_lr=0.1, inner_steps=steps, multi_step_loss=10)
    batch = episode()
    maml.optimizer.iterations.assign(4)  # weights 0.2, 0.2, 0.6
    sx, sy, qx, qy = batch
    preds = maml.predict_after_adaptation(sx, sy, qx, steps=range(1, steps + 1))
    per_step = np.mean((preds - qy.numpy()[None]) ** 2, axis=(2, 3)).mean(axis=1)
    expected = float(np.dot([0.2, 0.2, 0.6], per_step))
    np.testing.assert_allclose(maml.meta_loss(batch).numpy(), expected, rtol=1e-10)
    # Evaluation (training=False) reports the final step's loss alone.
    np.testing.assert_allclose(maml.meta_loss(batch, training=False).numpy(), per_step[-1], rtol=1e-10)


@pytest.mark.parametrize("task_execution,recompute", [("vectorized", False), ("map", False), ("loop", False),
                                                      ("map", True)])
def test_multi_step_loss_gradient_matches_finite_differences(task_execution, recompute, central_differences):
    maml = compiled(inner_lr=0.1, inner_steps=3, multi_step_loss=10, task_execution=task_execution,
                    recompute_inner_loop=recompute)
    maml.optimizer.iterations.assign(4)
    batch = episode()
    loss = tf.function(lambda: maml.meta_loss(batch)) if recompute else (lambda: maml.meta_loss(batch))
    with tf.GradientTape() as tape:
        value = loss()
    analytic = tape.gradient(value, maml.model.trainable_variables)
    numeric = central_differences(loss, maml.model.trainable_variables)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a.numpy(), n, rtol=1e-5, atol=1e-8)


def test_annealed_multi_step_loss_is_maml_and_skips_the_earlier_query_passes():
    batch = episode()
    plain = compiled(inner_lr=0.1, inner_steps=3)
    annealed = MAML(plain.model, inner_lr=0.1, inner_steps=3, multi_step_loss=10)
    annealed.compile(optimizer="sgd", loss="mse")
    annealed.optimizer.iterations.assign(10)
    grads = []
    for maml in (plain, annealed):
        with tf.GradientTape() as tape:
            loss = maml.meta_loss(batch)
        grads.append([g.numpy() for g in tape.gradient(loss, plain.model.trainable_variables)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # The skipped passes are real: a model whose query pass counts its calls sees only the last one.
    calls = tf.Variable(0, dtype=tf.int64)

    class Counting(keras.layers.Layer):
        def call(self, x):
            calls.assign_add(1)
            return x

    inputs = keras.Input(shape=(1,), dtype="float64")
    out = keras.layers.Dense(1, dtype="float64")(Counting(dtype="float64")(inputs))
    counted = MAML(keras.Model(inputs, out), inner_lr=0.1, inner_steps=3, multi_step_loss=10, task_execution="loop")
    counted.compile(optimizer="sgd", loss="mse")
    counted.optimizer.iterations.assign(10)
    counted.meta_loss(batch)
    late = int(calls.numpy())
    calls.assign(0)
    counted.optimizer.iterations.assign(0)
    counted.meta_loss(batch)
    assert int(calls.numpy()) == late + 2 * 2  # 2 earlier steps' query passes × 2 tasks


def test_per_step_rates_apply_step_by_step_and_the_last_one_beyond():
    maml = compiled(inner_lr=0.1, inner_steps=2, learn_inner_lr="per_step")
    assert all(lr.shape == (2,) for lr in maml.inner_lrs)
    sx, sy, qx, _ = episode()
    for lr in maml.inner_lrs:
        lr.assign([0.0, 3.0])  # multipliers of α = 0.1: step 1 does nothing; steps 2, 3, ... use 0.3
    np.testing.assert_allclose(maml.inner_rates()[0], [0.0, 0.3])
    got = maml.predict_after_adaptation(sx, sy, qx, steps=(1, 2, 3))
    reference = compiled(inner_lr=0.3, inner_steps=2)
    reference.model.set_weights(maml.model.get_weights())
    expected = reference.predict_after_adaptation(sx, sy, qx, steps=(0, 1, 2))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_per_step_rates_get_gradients_that_match_finite_differences(central_differences):
    maml = compiled(inner_lr=0.1, inner_steps=2, learn_inner_lr="per_step", multi_step_loss=10)
    batch = episode()
    rates = [lr for lr in maml.inner_lrs if lr is not None]
    with tf.GradientTape() as tape:
        loss = maml.meta_loss(batch)
    analytic = tape.gradient(loss, rates)
    numeric = central_differences(lambda: maml.meta_loss(batch), rates)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a.numpy(), n, rtol=1e-5, atol=1e-9)
        assert np.all(np.abs(n) > 0)  # both steps' rates matter


def test_maml_plus_plus_options_train_save_and_reload(tmp_path):
    keras.utils.set_random_seed(0)
    maml = MAML(tiny_model(), inner_lr=0.05, inner_steps=2, learn_inner_lr="per_step", multi_step_loss=5,
                first_order_until=4, task_execution="loop")
    maml.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    data = tf.data.Dataset.from_tensor_slices(tuple(episode(tasks=40, shots=5)))
    data = data.batch(4, drop_remainder=True).repeat()
    before = [lr.numpy().copy() for lr in maml.inner_lrs]
    assert MAML(tiny_model()).meta_steps_done() == 0  # not compiled: no optimizer yet
    maml.fit(data, steps_per_epoch=10, epochs=1, verbose=0)
    assert int(maml.optimizer.iterations.numpy()) == maml.meta_steps_done() == 10
    moved = np.stack([lr.numpy() - b for lr, b in zip(maml.inner_lrs, before)])
    assert np.all(np.abs(moved) > 0) and not np.allclose(moved[:, 0], moved[:, 1])  # each step's own rate
    path = str(tmp_path / "m.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert (loaded.learn_inner_lr, loaded.multi_step_loss, loaded.first_order_until) == ("per_step", 5, 4)
    for a, b in zip(loaded.inner_lrs, maml.inner_lrs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    batch = episode(seed=(7, 8))
    np.testing.assert_allclose(loaded.meta_loss(batch, training=False), maml.meta_loss(batch, training=False))


@pytest.mark.parametrize("kwargs,match", [
    ({"learn_inner_lr": "per_layer"}, "learn_inner_lr must be False, True"),
    ({"learn_inner_lr": 1}, "learn_inner_lr must be False, True"),
    ({"learn_inner_lr": "per_step", "inner_steps": 0}, "needs inner_steps >= 1"),
    ({"multi_step_loss": -1}, r"multi_step_loss must be an integer >= 0, got -1\."),
    ({"multi_step_loss": 2.5}, r"multi_step_loss must be an integer >= 0, got 2\.5\."),
    ({"first_order_until": -1}, r"first_order_until must be an integer >= 0, got -1\."),
    ({"first_order_until": True}, r"first_order_until must be an integer >= 0, got True\."),
])
def test_bad_maml_plus_plus_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAML(tiny_model(), **kwargs)


def test_assigning_a_fixed_rate_to_learned_per_step_rates_is_refused_by_name():
    maml = compiled(inner_steps=2, learn_inner_lr="per_step")
    with pytest.raises(AttributeError, match="learn_inner_lr='per_step' the inner rates are inner_lr times trained"):
        maml.inner_lr = 0.5


def meta_gradient_tensors(maml, batch):
    with tf.GradientTape() as tape:
        loss = maml.meta_loss(batch)
    return tape.gradient(loss, maml.trainable_variables)


def meta_gradients(maml, batch):
    return [g.numpy() for g in meta_gradient_tensors(maml, batch)]


def gradients_of_order(first_order, like, batch, **kwargs):
    """The meta-gradients of a plain first- or second-order MAML at ``like``'s weights."""
    reference = compiled(first_order=first_order, **kwargs)
    for a, b in zip(reference.trainable_variables, like.trainable_variables):
        a.assign(b)
    return meta_gradients(reference, batch)


@pytest.mark.parametrize("graph", [False, True])
def test_derivative_order_annealing_differentiates_first_order_then_second_order(graph):
    options = dict(inner_lr=0.1, inner_steps=2)
    maml = compiled(first_order_until=3, **options)
    batch = episode()
    first, second = (gradients_of_order(order, maml, batch, **options) for order in (True, False))
    assert not all(np.allclose(a, b) for a, b in zip(first, second))  # the orders really differ here
    def gradients():
        return meta_gradient_tensors(maml, batch)

    compute = tf.function(gradients) if graph else gradients  # traced once: the order follows the meta-step
    for step, expected in ((0, first), (2, first), (3, second), (50, second)):
        maml.optimizer.iterations.assign(step)
        for a, b in zip(compute(), expected):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-10, atol=1e-14)


def test_meta_loss_refuses_a_graph_gradient_that_annealing_and_recomputation_cannot_give():
    maml = compiled(inner_steps=2, first_order_until=3, recompute_inner_loop=True)
    batch = episode()
    with pytest.raises(NotImplementedError, match="fit/train_step, which support both"):
        tf.function(lambda: maml.meta_loss(batch))()
    assert np.isfinite(maml.meta_loss(batch).numpy())  # eagerly it is fine


def test_a_weight_the_meta_loss_never_reaches_keeps_no_gradient_under_annealing():
    """Zeros stand in for its gradient inside the tf.cond, but the optimizer must still get None: AdamW
    would otherwise decay the weight."""

    class WithUnusedWeight(keras.layers.Layer):
        def build(self, input_shape):
            self.used = self.add_weight(shape=(), initializer="ones", dtype="float64")
            self.unused = self.add_weight(shape=(), initializer="ones", dtype="float64")

        def call(self, x):
            return x * self.used

    inputs = keras.Input(shape=(1,), dtype="float64")
    maml = MAML(keras.Model(inputs, WithUnusedWeight(dtype="float64")(inputs)), inner_lr=0.1, inner_steps=2,
                first_order_until=1)
    maml.compile(optimizer=keras.optimizers.AdamW(0.1, weight_decay=0.5), loss="mse")
    maml.fit(tf.data.Dataset.from_tensors(tuple(episode())).repeat(), steps_per_epoch=3, epochs=1, verbose=0)
    layer = maml.model.layers[-1]
    assert float(layer.unused.numpy()) == 1.0 and float(layer.used.numpy()) != 1.0


@pytest.mark.parametrize("task_execution,recompute,eager", [("vectorized", False, False), ("map", True, False),
                                                             ("loop", False, True)])
def test_derivative_order_annealing_trains_first_order_then_second_order(task_execution, recompute, eager):
    """``fit`` (a traced ``tf.cond``, or eagerly a Python choice) updates θ and the learned rates with
    first-order meta-gradients before ``first_order_until`` meta-steps and second-order ones from then on,
    also when resumed past it."""
    options = dict(inner_lr=0.1, inner_steps=2, learn_inner_lr="per_step", multi_step_loss=10,
                   task_execution=task_execution)
    batch = episode()
    data = tf.data.Dataset.from_tensors(tuple(batch)).repeat()
    maml = MAML(tiny_model(), first_order_until=1, recompute_inner_loop=recompute, **options)
    maml.compile(optimizer="sgd", loss="mse", run_eagerly=eager)
    lr = float(maml.optimizer.learning_rate.numpy())
    for step, first_order in ((0, True), (1, False), (5, False)):
        maml.optimizer.iterations.assign(step)
        reference = compiled(**options)  # the multi-step weights depend on the meta-step too
        reference.optimizer.iterations.assign(step)
        for a, b in zip(reference.trainable_variables, maml.trainable_variables):
            a.assign(b)
        reference.first_order = first_order
        grads = meta_gradients(reference, batch)
        expected = [v.numpy() - lr * g for v, g in zip(maml.trainable_variables, grads)]
        maml.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
        for v, e in zip(maml.trainable_variables, expected):
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-10, atol=1e-14)
