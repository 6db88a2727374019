"""FusedBatchNormalization computes what Keras' BatchNormalization computes (outputs, statistics, gradients),
and its second-order meta-gradient is exact where Keras' is not (Keras' moments stop the gradient through the
mean, which drops a second-order term)."""

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


def test_same_outputs_statistics_and_gradients_as_keras():
    """The second-order comparison here (a gradient norm) is one where Keras' dropped term cancels (a batch
    norm's input gradients sum to zero per channel); the meta-gradient test below is the exact check."""
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


def _bn_classifier(bn_layer, dtype):
    inputs = keras.Input((5, 5, 1), dtype=dtype)
    x = keras.layers.Conv2D(3, 3, dtype=dtype, name="conv",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inputs)
    x = bn_layer(dtype=dtype, name="bn")(x)
    x = keras.layers.Activation("tanh", dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    outputs = keras.layers.Dense(2, dtype=dtype, name="head",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=2))(x)
    return keras.Model(inputs, outputs)


def _meta_learner(model):
    from tf_maml import MAML

    maml = MAML(model, inner_lr=0.5, inner_steps=1, task_execution="loop")
    dtype = model.outputs[0].dtype
    maml.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype))
    return maml


def _episode(dtype):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 8, 5, 5, 1)).astype(dtype)
    labels = np.tile(np.array([0, 1, 0, 1], np.int32), (2, 2))
    return tuple(tf.constant(v) for v in (images[:, :4], labels[:, :4], images[:, 4:], labels[:, 4:]))


def _meta_gradient(maml, batch):
    with tf.GradientTape() as tape:
        loss = maml.meta_loss(batch)
    return [g.numpy() for g in tape.gradient(loss, maml.model.trainable_variables)]


def test_second_order_meta_gradient_is_exact_and_fused_path_agrees(central_differences):
    """Float64 (Keras path with exact moments) against central differences; float32 (fused op) against it."""
    exact = _meta_learner(_bn_classifier(FusedBatchNormalization, "float64"))
    batch = _episode("float64")
    analytic = _meta_gradient(exact, batch)
    meta_loss = tf.function(exact.meta_loss)  # traced once; reads the shifted variables at every call
    numeric = central_differences(lambda: meta_loss(batch), exact.model.trainable_variables)
    for var, grad, num in zip(exact.model.trainable_variables, analytic, numeric):
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7, err_msg=var.path)

    # Why the layer exists: the same network with Keras' layer gets the second-order term wrong (the conv
    # weights before the batch norm), by far more than the fused layer's float64 round-off.
    keras_bn = _meta_learner(_bn_classifier(keras.layers.BatchNormalization, "float64"))
    for v, w in zip(keras_bn.model.weights, exact.model.weights):
        v.assign(w)
    keras_error = np.abs(_meta_gradient(keras_bn, batch)[0] - numeric[0]).max()
    fused_error = np.abs(analytic[0] - numeric[0]).max()
    assert keras_error > 1e3 * fused_error and keras_error > 1e-6, (
        f"Keras' batch norm now matches finite differences ({keras_error:.2e}): its moments keep the "
        "second-order term; README's batch-norm note and the reason for FusedBatchNormalization need updating.")

    fused = _meta_learner(_bn_classifier(FusedBatchNormalization, "float32"))
    for v32, v64 in zip(fused.model.weights, exact.model.weights):
        v32.assign(v64.numpy().astype("float32"))
    assert fused.model.get_layer("bn")._can_fuse(tf.zeros((4, 3, 3, 3)), True, None)
    scale = max(float(np.abs(g).max()) for g in analytic)  # the conv bias has a zero gradient (BN removes it)
    for g32, g64 in zip(_meta_gradient(fused, _episode("float32")), analytic):
        np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=1e-4 * scale)


def test_loads_in_a_fresh_process_with_only_tf_maml_imported(tmp_path):
    import os
    import subprocess
    import sys

    from tf_maml.models.convnets import omniglot_convnet

    model = omniglot_convnet(5)
    model.save(tmp_path / "net.keras")
    code = ("import sys, keras, tf_maml; m = keras.models.load_model(sys.argv[1]); "
            "print(type(m.get_layer('block1_bn')).__name__)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "net.keras")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("FusedBatchNormalization")
