"""FusedBatchNormalization is Keras' BatchNormalization to float precision, through second-order gradients."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_maml.models.fused_batch_norm import FusedBatchNormalization


def _twin_layers(shape):
    plain = keras.layers.BatchNormalization(momentum=0.9)
    fused = FusedBatchNormalization(momentum=0.9)
    plain.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(0)
    for v in plain.weights:
        base = 1.0 if ("gamma" in v.path or "variance" in v.path) else 0.0
        v.assign(base + 0.1 * rng.standard_normal(v.shape).astype("float32"))
    for p, f in zip(plain.weights, fused.weights):
        f.assign(p)
    return plain, fused


def test_same_outputs_statistics_and_gradients_to_second_order():
    x = tf.constant(np.random.default_rng(1).normal(1.0, 3.0, (10, 7, 7, 16)).astype("float32"))
    plain, fused = _twin_layers(x.shape)
    assert fused._can_fuse(x, True, None)
    results = []
    for layer in (plain, fused):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y**3)
            grads = inner.gradient(loss, [x, layer.gamma, layer.beta])
            grad_norm = tf.add_n([tf.reduce_sum(g**2) for g in grads])
        second = outer.gradient(grad_norm, [x, layer.gamma])
        results.append([y, *grads, *second])
    for a, b in zip(*results):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-5, atol=2e-5 * float(np.abs(a.numpy()).max()))
    for p, f in zip(plain.weights, fused.weights):  # moving statistics updated alike (biased variance)
        np.testing.assert_allclose(f.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.moving_mean.numpy(), 0.0)


def test_inference_masks_and_float64_fall_back_to_keras():
    x = tf.random.normal((4, 5, 5, 3))
    _, fused = _twin_layers(x.shape)
    assert not fused._can_fuse(x, False, None)
    assert not fused._can_fuse(tf.cast(x, tf.float64), True, None)
    assert not fused._can_fuse(x, True, tf.ones((4, 5, 5), bool))
    before = fused.moving_mean.numpy()
    fused(x, training=False)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), before)


def test_saves_and_loads_as_a_keras_model(tmp_path):
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(keras.layers.Conv2D(4, 3)(inputs)))
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype("float32")
    model(x, training=True)  # moves the statistics
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    for training in (True, False):
        np.testing.assert_allclose(loaded(x, training=training), model(x, training=training), rtol=1e-6, atol=1e-6)
