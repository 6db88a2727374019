"""The paper's comparison point: one model pretrained on all tasks at once, then fine-tuned like MAML."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_maml.settings import check_value, integer


def pretrain_on_all_tasks(model: keras.Model, episodes: tf.data.Dataset, steps: int, learning_rate: float = 1e-3,
                          loss: str = "mse", verbose: int = 0) -> keras.Model:
    """Train ``model`` by ordinary supervised learning on every point of every task, pooled.

    Each episode batch contributes all its support and query examples, so the baseline sees exactly the
    data MAML sees; it just does not learn to adapt.
    """

    check_value("steps", steps, integer(1))  # Keras reads steps_per_epoch=0 as "until the endless stream ends"

    def pooled(sx, sy, qx, qy):
        x = tf.concat([sx, qx], axis=1)
        y = tf.concat([sy, qy], axis=1)
        return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)), tf.reshape(y, tf.concat([[-1], tf.shape(y)[2:]], 0))

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    model.fit(episodes.map(pooled), steps_per_epoch=steps, epochs=1, verbose=verbose, shuffle=False)
    return model
