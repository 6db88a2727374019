"""``recompute_inner_loop``: the backward pass recomputes the tasks one at a time, and in each task each
inner step, with exactly the same meta-gradient.

The saving itself (peak memory against inner steps) is measured by ``benchmarks/bench_memory.py``; here
we check that the recomputation really runs in the backward pass and changes no gradient.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import MAML, inner_loop
from test_maml_gradients import episode, tiny_model


def tiny_bn_model():
    """Conv + batch norm in float64: the recomputed step reads the BN variables (``variables`` path)."""
    inputs = keras.Input(shape=(4, 4, 1), dtype="float64")
    h = keras.layers.Conv2D(2, 3, padding="same", dtype="float64", name="conv")(inputs)
    h = keras.layers.BatchNormalization(dtype="float64", name="bn")(h)
    h = keras.layers.Activation("tanh", dtype="float64")(h)
    h = keras.layers.GlobalAveragePooling2D(dtype="float64")(h)
    out = keras.layers.Dense(3, dtype="float64", name="head")(h)
    return keras.Model(inputs, out)


def image_episode(tasks=2, ways=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(tasks, 2 * ways, 4, 4, 1))
    y = np.tile(np.arange(ways), (tasks, 2)).astype(np.int32)
    return x[:, :ways], y[:, :ways], x[:, ways:], y[:, ways:]


class CountSteps:
    """Counts traced inner steps. With recomputation the backward pass traces each step twice more: once
    when it recomputes the task, once when it recomputes the step for its vector-Jacobian product."""

    def __init__(self, monkeypatch):
        self.forward = self.backward = 0
        self.in_backward = False
        original = inner_loop.gradient_step

        def counted(*args, **kwargs):
            if self.in_backward:
                self.backward += 1
            else:
                self.forward += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(inner_loop, "gradient_step", counted)


def graph_meta_gradient(maml, batch, counter=None):
    """The meta-gradient inside ``tf.function`` (where the recomputation saves memory), θ and rates."""

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            loss = maml.meta_loss(batch)
        if counter is not None:
            counter.in_backward = True
        return tape.gradient(loss, maml.trainable_variables)

    return np.concatenate([g.numpy().ravel() for g in grad()])


def maml_loss(model):
    if model.output.shape[-1] == 1:
        return "mse"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


def make_pair(model, **kwargs):
    mamls = [MAML(model, recompute_inner_loop=r, **kwargs) for r in (False, True)]
    for m in mamls:
        m.compile(optimizer="sgd", loss=maml_loss(model))
    # Meta-SGD rates are weights of each MAML: start both from the same values.
    mamls[1].set_weights(mamls[0].get_weights())
    return mamls


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("task_execution", ["vectorized", "map", "loop"])
def test_recomputed_second_order_gradient_is_the_same(steps, task_execution, monkeypatch):
    plain, recomputed = make_pair(tiny_model(), inner_lr=0.1, inner_steps=steps, task_execution=task_execution,
                                  learn_inner_lr=True)
    batch = episode(tasks=3)
    expected = graph_meta_gradient(plain, batch)
    counter = CountSteps(monkeypatch)
    got = graph_meta_gradient(recomputed, batch, counter)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    assert counter.forward >= steps and counter.backward == 2 * steps
    # The rates' gradients were compared too: each is a nonzero slice of the flattened gradient.
    offsets = np.cumsum([0] + [int(np.prod(v.shape)) for v in plain.trainable_variables])
    rate_ids = {id(r) for r in plain.inner_lrs if r is not None}
    rate_slices = [expected[a:b] for v, a, b in zip(plain.trainable_variables, offsets, offsets[1:])
                   if id(v) in rate_ids]
    assert rate_slices and len(rate_slices) == len(rate_ids)
    assert all(np.linalg.norm(g) > 0 for g in rate_slices)


def test_recomputation_with_batch_norm():
    # Batch norm state enters the recomputed step; "map" differentiates it inside a while loop.
    plain, recomputed = make_pair(tiny_bn_model(), inner_lr=0.2, inner_steps=2, task_execution="map")
    batch = image_episode()
    np.testing.assert_allclose(graph_meta_gradient(recomputed, batch), graph_meta_gradient(plain, batch),
                               rtol=1e-10, atol=1e-10)


def test_recomputation_with_anil():
    # The frozen body is not updated but still gets second-order terms through the head's steps.
    plain, recomputed = make_pair(tiny_model(), inner_lr=0.1, inner_steps=2, task_execution="loop",
                                  adapt_layers=["head"])
    batch = episode()
    expected = graph_meta_gradient(plain, batch)
    np.testing.assert_allclose(graph_meta_gradient(recomputed, batch), expected, rtol=1e-10, atol=1e-10)


def test_fit_step_with_recomputation_matches():
    weights = None
    thetas = []
    for recompute in (False, True):
        model = tiny_bn_model()
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        maml = MAML(model, inner_lr=0.2, inner_steps=2, task_execution="loop", recompute_inner_loop=recompute,
                    batch_norm="running")
        maml.compile(optimizer=keras.optimizers.SGD(1.0), loss=maml_loss(model))
        maml.fit(tf.data.Dataset.from_tensors(image_episode()), epochs=1, verbose=0)
        thetas.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-10, atol=1e-10)


def test_first_order_is_unaffected():
    plain, recomputed = make_pair(tiny_model(), inner_lr=0.1, inner_steps=2, task_execution="loop",
                                  first_order=True)
    batch = episode()
    np.testing.assert_array_equal(graph_meta_gradient(recomputed, batch), graph_meta_gradient(plain, batch))


def test_option_is_serialised():
    maml = MAML(tiny_model(), inner_steps=2, task_execution="map", recompute_inner_loop=True)
    assert maml.get_config()["recompute_inner_loop"] is True
    assert MAML.from_config(maml.get_config()).recompute_inner_loop is True  # (from_config consumes its input)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(maml))
    assert restored.recompute_inner_loop is True and restored.task_execution == "map"
    old = {k: v for k, v in maml.get_config().items() if k != "recompute_inner_loop"}  # saved before the option
    assert MAML.from_config(old).recompute_inner_loop is False


def test_tf_recompute_grad_would_drop_the_inner_gradient():
    """Why recomputed_gradient_step is written by hand: tf.recompute_grad runs the forward pass with all
    tapes stopped, the inner tape included, so an inner SGD step silently becomes the identity."""
    w = tf.constant([[0.3, -0.2], [0.1, 0.4]], tf.float64)
    x = tf.constant([[1.0, 2.0], [0.5, -1.0]], tf.float64)

    def step(w):
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = tf.reduce_sum(tf.tanh(x @ w) ** 2)
        return w - 0.1 * tape.gradient(loss, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    loss_fn = lambda ps: tf.reduce_sum(tf.tanh(x @ ps[0]) ** 2)  # noqa: E731
    ours = inner_loop.recomputed_gradient_step([w], loss_fn, [tf.constant(0.1, tf.float64)])[0]
    np.testing.assert_allclose(ours, step(w), rtol=1e-12)
    assert np.abs(step(w) - w).max() > 1e-2
    np.testing.assert_array_equal(tf.recompute_grad(step)(w), w)  # if this ever fails, TF fixed it
