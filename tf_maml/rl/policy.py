"""Gaussian MLP policy (MAML-TRPO): 2×100 ReLU, state-independent learned log-std.

The Keras model is the single definition of the architecture; its single output is
``concat([mean, log_std], -1)`` so that :func:`tf_maml.inner_loop.functional_call` (which expects one
output tensor) runs it with substituted parameters. The distribution helpers below take that output.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_maml.inner_loop import functional_call


@keras.saving.register_keras_serializable(package="tf_maml")
class GaussianHead(keras.layers.Layer):
    """Appends a learned, state-independent log-std to the mean: ``[..., 2·act_dim]``.

    The log-std is a weight (not an input-dependent output), as in rllab's GaussianMLPPolicy, so the
    inner update adapts exploration noise per task too. Like rllab's ``min_std``, the output is floored at
    ``log(min_std)``: a fast learning rate can otherwise drive the std to zero, and with it the log-density
    of the sampled actions to infinity.
    """

    def __init__(self, init_log_std: float = 0.0, min_std: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        if not min_std > 0:
            raise ValueError(f"min_std must be > 0, got {min_std!r}.")
        self.init_log_std = float(init_log_std)
        self.min_std = float(min_std)

    def build(self, input_shape) -> None:
        self.log_std = self.add_weight(
            name="log_std",
            shape=(int(input_shape[-1]),),
            initializer=keras.initializers.Constant(self.init_log_std),
            trainable=True,
        )

    def call(self, mean):
        log_std = keras.ops.maximum(keras.ops.cast(self.log_std, mean.dtype), math.log(self.min_std))
        log_std = keras.ops.broadcast_to(log_std, keras.ops.shape(mean))
        return keras.ops.concatenate([mean, log_std], axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "init_log_std": self.init_log_std, "min_std": self.min_std}


def build_policy(
    obs_dim: int,
    act_dim: int,
    hidden: Sequence[int] = (100, 100),
    init_log_std: float = 0.0,
    seed: int | None = None,
    dtype: str = "float32",
) -> keras.Model:
    """The Gaussian MLP policy; ``seed`` makes the initial weights reproducible."""
    inputs = keras.Input((obs_dim,), dtype=dtype, name="observations")
    x = inputs
    for i, units in enumerate(hidden):
        init = keras.initializers.GlorotUniform(seed=None if seed is None else seed + i)
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=init, dtype=dtype, name=f"hidden_{i}")(x)
    out_init = keras.initializers.GlorotUniform(seed=None if seed is None else seed + len(hidden))
    mean = keras.layers.Dense(act_dim, kernel_initializer=out_init, dtype=dtype, name="mean")(x)
    outputs = GaussianHead(init_log_std, dtype=dtype, name="gaussian_head")(mean)
    return keras.Model(inputs, outputs, name="gaussian_mlp_policy")


def policy_params(model: keras.Model) -> list[tf.Tensor]:
    """Current parameter values (a plain list aligned with ``model.trainable_variables``)."""
    return [tf.convert_to_tensor(v.value) for v in model.trainable_variables]


def distribution(model: keras.Model, params: Sequence[tf.Tensor], obs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(mean, log_std)`` of π_params(·|obs) for obs of any leading shape ``[..., obs_dim]``."""
    obs = tf.convert_to_tensor(obs)
    lead = tf.shape(obs)[:-1]
    flat = tf.reshape(obs, [-1, obs.shape[-1]])
    out, _, _ = functional_call(model, params, flat, training=False)
    out = tf.reshape(out, tf.concat([lead, [out.shape[-1]]], axis=0))
    mean, log_std = tf.split(out, 2, axis=-1)
    return mean, log_std


def log_prob(mean: tf.Tensor, log_std: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
    """Log-density of a diagonal Gaussian, summed over the action axis."""
    z = (actions - mean) * tf.exp(-log_std)
    return tf.reduce_sum(-0.5 * tf.square(z) - log_std - 0.5 * math.log(2.0 * math.pi), axis=-1)


def entropy(log_std: tf.Tensor) -> tf.Tensor:
    """Differential entropy of a diagonal Gaussian, summed over the action axis."""
    return tf.reduce_sum(log_std + 0.5 * math.log(2.0 * math.pi * math.e), axis=-1)


def kl_divergence(mean_p: tf.Tensor, log_std_p: tf.Tensor, mean_q: tf.Tensor, log_std_q: tf.Tensor) -> tf.Tensor:
    """KL(p ‖ q) between diagonal Gaussians, summed over the action axis (TRPO's trust region uses
    p = the sampling policy, q = the candidate)."""
    var_p = tf.exp(2.0 * log_std_p)
    var_q = tf.exp(2.0 * log_std_q)
    kl = log_std_q - log_std_p + (var_p + tf.square(mean_p - mean_q)) / (2.0 * var_q) - 0.5
    return tf.reduce_sum(kl, axis=-1)


def sample_actions(mean: tf.Tensor, log_std: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
    """Reparameterised sample ``mean + std·ε`` for standard-normal ``noise`` ε drawn by the caller (the sampler
    keys it by episode slot and step, so the episodes do not depend on how envs are grouped)."""
    return mean + tf.exp(log_std) * tf.cast(noise, mean.dtype)


def flat_size(params: Sequence[tf.Tensor]) -> int:
    return int(sum(np.prod(p.shape) for p in params))
