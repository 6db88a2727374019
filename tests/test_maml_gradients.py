"""The meta-gradient is exact: second order matches finite differences, first order is what it claims."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import MAML
from tf_maml.data.sinusoid import sample_sinusoid_tasks


def tiny_model():
    # tanh keeps the loss smooth, so central differences are accurate.
    inputs = keras.Input(shape=(1,), dtype="float64")
    h = keras.layers.Dense(3, activation="tanh", dtype="float64", name="hidden")(inputs)
    out = keras.layers.Dense(1, dtype="float64", name="head")(h)
    return keras.Model(inputs, out)


def episode(tasks=2, shots=4):
    batch, _ = sample_sinusoid_tasks([3, 4], tasks, shots, shots, dtype=tf.float64)
    return batch


def meta_gradient(maml, batch):
    with tf.GradientTape() as tape:
        loss = maml.meta_loss(batch)
    return [g.numpy() for g in tape.gradient(loss, maml.model.trainable_variables)]


def gradient_with_constant_inner_gradients(maml, batch, steps, lr):
    """First-order MAML by hand: run SGD, then take the query gradient at the adapted weights."""
    total = [np.zeros(v.shape) for v in maml.model.trainable_variables]
    sx, sy, qx, qy = batch
    for t in range(sx.shape[0]):
        params = [tf.Variable(v.numpy()) for v in maml.model.trainable_variables]
        for _ in range(steps):
            with tf.GradientTape() as tape:
                pred, _ = maml.model.stateless_call(params, [], sx[t])
                loss = tf.reduce_mean(tf.square(pred - sy[t]))
            for p, g in zip(params, tape.gradient(loss, params)):
                p.assign_sub(lr * g)
        with tf.GradientTape() as tape:
            pred, _ = maml.model.stateless_call(params, [], qx[t])
            loss = tf.reduce_mean(tf.square(pred - qy[t]))
        for i, g in enumerate(tape.gradient(loss, params)):
            total[i] += g.numpy() / sx.shape[0]
    return total


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("task_execution", ["vectorized", "map", "loop"])
def test_second_order_matches_finite_differences(steps, task_execution, central_differences):
    maml = MAML(tiny_model(), inner_lr=0.1, inner_steps=steps, task_execution=task_execution)
    maml.compile(optimizer="sgd", loss="mse")
    batch = episode()
    analytic = meta_gradient(maml, batch)
    numeric = central_differences(lambda: maml.meta_loss(batch), maml.model.trainable_variables)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_differs_and_holds_inner_gradients_constant(steps):
    lr = 0.1
    second = MAML(tiny_model(), inner_lr=lr, inner_steps=steps)
    first = MAML(second.model, inner_lr=lr, inner_steps=steps, first_order=True)
    for m in (first, second):
        m.compile(optimizer="sgd", loss="mse")
    batch = episode()
    g2 = np.concatenate([g.ravel() for g in meta_gradient(second, batch)])
    g1 = np.concatenate([g.ravel() for g in meta_gradient(first, batch)])
    expected = np.concatenate([g.ravel() for g in gradient_with_constant_inner_gradients(first, batch, steps, lr)])
    np.testing.assert_allclose(g1, expected, rtol=1e-7, atol=1e-10)
    assert np.linalg.norm(g1 - g2) > 1e-3 * np.linalg.norm(g2)


def test_meta_sgd_rates_receive_gradients_that_match_finite_differences(central_differences):
    # Every rate of every layer (one per parameter element: 3 + 3 + 3 + 1), not only the first.
    maml = MAML(tiny_model(), inner_lr=0.1, inner_steps=1, learn_inner_lr=True)
    maml.compile(optimizer="sgd", loss="mse")
    batch = episode()
    rates = [r for r in maml.inner_lrs if r is not None]
    assert len(rates) == len(maml.model.trainable_variables)
    with tf.GradientTape() as tape:
        loss = maml.meta_loss(batch)
    analytic = tape.gradient(loss, rates)
    numeric = central_differences(lambda: maml.meta_loss(batch), rates)
    for a, n in zip(analytic, numeric):
        assert np.abs(n).max() > 0
        np.testing.assert_allclose(a.numpy(), n, rtol=1e-5, atol=1e-9)
