"""The 4-block conv nets of the MAML paper (Finn et al. 2017, §5.2), as plain Keras functional models
(batch norm: :class:`~tf_maml.models.fused_batch_norm.FusedBatchNormalization`, Keras' layer run as one op).

Layers are named ``block{i}_conv``, ``block{i}_bn``, ``block{i}_relu`` (and ``block{i}_pool``), then
``features`` and ``head`` (the Dense logits), so adapted parameters can be chosen by layer name —
e.g. ANIL adapts only ``head``. Batch norm is meant to run with batch statistics (``training=True``,
transductive, as in the reference code); its moving statistics are not needed for few-shot evaluation.
"""

from __future__ import annotations

import keras

from tf_maml.models.fused_batch_norm import FusedBatchNormalization


def _conv_block(x, index: int, filters: int, strides: int, pool: bool, bn_momentum: float):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"block{index}_conv")(x)
    x = FusedBatchNormalization(momentum=bn_momentum, name=f"block{index}_bn")(x)
    x = keras.layers.ReLU(name=f"block{index}_relu")(x)
    if pool:
        x = keras.layers.MaxPool2D(2, strides=2, padding="valid", name=f"block{index}_pool")(x)
    return x


def omniglot_convnet(
    ways: int,
    input_shape: tuple[int, int, int] = (28, 28, 1),
    filters: int = 64,
    bn_momentum: float = 0.99,
    name: str = "omniglot_convnet",
) -> keras.Model:
    """4 × [3×3 conv stride 2 'same', BN, ReLU] → spatial mean → Dense(ways) logits (28 → 14 → 7 → 4 → 2)."""
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i in range(1, 5):
        x = _conv_block(x, i, filters, strides=2, pool=False, bn_momentum=bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(ways, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def miniimagenet_convnet(
    ways: int,
    input_shape: tuple[int, int, int] = (84, 84, 3),
    filters: int = 32,
    bn_momentum: float = 0.99,
    name: str = "miniimagenet_convnet",
) -> keras.Model:
    """4 × [3×3 conv 'same', BN, ReLU, 2×2 max-pool] → flatten → Dense(ways) logits (84 → 42 → 21 → 10 → 5)."""
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i in range(1, 5):
        x = _conv_block(x, i, filters, strides=1, pool=True, bn_momentum=bn_momentum)
    x = keras.layers.Flatten(name="features")(x)
    outputs = keras.layers.Dense(ways, name="head")(x)
    return keras.Model(inputs, outputs, name=name)
