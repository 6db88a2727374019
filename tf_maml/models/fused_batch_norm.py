"""Batch normalisation that is fast and exact for MAML's second-order meta-gradients.

Keras 3 normalises with about ten element-wise ops (and more in the gradient); on the small per-task
batches of few-shot learning that op count, not arithmetic, dominates a MAML meta-step. TensorFlow's
``FusedBatchNormV3`` does the same maths in one op with a fused gradient, which itself has a gradient,
so second-order MAML works through it (measured in BENCHMARKS.md).

Keras' batch statistics come from ``tf.nn.moments``, which stops the gradient of the mean inside the
variance. That leaves first-order gradients unchanged (the term is zero) but drops a term of the
second-order ones, so MAML's meta-gradient through ``keras.layers.BatchNormalization`` is not the true
one. This layer computes the statistics without that stop on every path; a float64 finite-difference
test of the meta-gradient holds it to the truth.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_maml")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with the same weights, config, outputs, statistics and first-order
    gradients, exact second-order gradients, and one fused op where it can be.

    The fused op is used for float32 NHWC inputs normalised over channels with batch statistics
    (``training=True``) under the TensorFlow backend; other cases run Keras' implementation with exact
    batch moments (:meth:`_moments`).
    """

    def _can_fuse(self, inputs, training, mask) -> bool:
        return bool(
            training and self.trainable and mask is None and not self.renorm and not self.synchronized
            and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and inputs.dtype == tf.float32 and self.center and self.scale
        )

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        axes = [i for i in range(len(inputs.shape)) if i != self.axis % len(inputs.shape)]
        mean = keras.ops.mean(inputs, axis=axes)
        centred = inputs - keras.ops.reshape(mean, self._broadcast_shape(inputs))
        return mean, keras.ops.mean(keras.ops.square(centred), axis=axes)

    def _broadcast_shape(self, inputs) -> list[int]:
        shape = [1] * len(inputs.shape)
        shape[self.axis] = -1
        return shape

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta),
            epsilon=self.epsilon, is_training=True, data_format="NHWC",
        )
        # The op reports the Bessel-corrected variance; Keras averages the biased one into its statistics.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), unbiased.dtype)
        variance = unbiased * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = tf.cast(self.momentum, mean.dtype)
        self.moving_mean.assign(self.moving_mean * momentum + tf.stop_gradient(mean) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + tf.stop_gradient(variance) * (1.0 - momentum))
        return outputs
