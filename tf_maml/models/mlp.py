"""The paper's regression network."""

from __future__ import annotations

import keras


def sinusoid_mlp(hidden: tuple[int, ...] = (40, 40), seed: int | None = None, dtype: str | None = None) -> keras.Model:
    """MLP 1-40-40-1 with ReLU, as in Finn et al. (2017)."""
    inputs = keras.Input(shape=(1,), dtype=dtype)
    x = inputs
    for i, units in enumerate(hidden):
        init = keras.initializers.GlorotUniform(seed=None if seed is None else seed + i)
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=init, dtype=dtype, name=f"hidden_{i}")(x)
    head_init = keras.initializers.GlorotUniform(seed=None if seed is None else seed + len(hidden))
    outputs = keras.layers.Dense(1, kernel_initializer=head_init, dtype=dtype, name="head")(x)
    return keras.Model(inputs, outputs, name="sinusoid_mlp")
