"""Batch normalisation whose batch-statistics path is one fused TensorFlow op.

Keras 3 normalises with about ten element-wise ops (and more in the gradient); on the small per-task
batches of few-shot learning that op count, not arithmetic, dominates a MAML meta-step. TensorFlow's
``FusedBatchNormV3`` does the same maths in one op with a fused gradient, which itself has a gradient,
so second-order MAML works through it. Measured in BENCHMARKS.md.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_maml")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with the same weights, config and results (tested), fused when it can be.

    The fused op is used for float32 NHWC inputs normalised over channels with batch statistics
    (``training=True``) under the TensorFlow backend; masks, renorm, synchronized statistics, other
    dtypes and inference fall back to the Keras implementation.
    """

    def _can_fuse(self, inputs, training, mask) -> bool:
        return bool(
            training and self.trainable and mask is None and not self.renorm and not self.synchronized
            and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and inputs.dtype == tf.float32 and self.center and self.scale
        )

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
