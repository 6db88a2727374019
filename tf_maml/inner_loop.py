"""The functional inner loop: adapt a Keras model's weights to one task without touching its variables.

Everything here works on plain lists of tensors aligned with ``model.trainable_variables``; the Keras
model is only ever *called* (``stateless_call``), so it stays the single definition of the architecture.
Supervised MAML and MAML-TRPO both build on :func:`gradient_step`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import tensorflow as tf

Params = list  # list[tf.Tensor], aligned with model.trainable_variables


def functional_call(
    model: keras.Model,
    params: Sequence[tf.Tensor],
    inputs: tf.Tensor,
    training: bool,
    non_trainable: Sequence[tf.Tensor] | None = None,
) -> tuple[tf.Tensor, list[tf.Tensor], tf.Tensor]:
    """Run ``model`` with ``params`` substituted for its trainable variables.

    Returns ``(outputs, updated_non_trainable_values, regularization_loss)``; the model's own
    variables are never assigned, so this is safe inside nested tapes and ``vectorized_map``.
    """
    if non_trainable is None:
        non_trainable = [v.value for v in model.non_trainable_variables]
    outputs, new_non_trainable, losses = model.stateless_call(
        list(params), list(non_trainable), inputs, training=training, return_losses=True
    )
    reg = tf.add_n([tf.cast(l, outputs.dtype) for l in losses]) if losses else tf.zeros((), outputs.dtype)
    return outputs, list(new_non_trainable), reg


def gradient_step(
    params: Sequence[tf.Tensor],
    loss_fn: Callable[[Sequence[tf.Tensor]], tf.Tensor],
    learning_rates: Sequence[tf.Tensor | None],
    first_order: bool,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """One differentiable SGD step ``θ' = θ − α ⊙ ∇L(θ)`` on the parameters whose rate is not None.

    Called under an outer ``GradientTape`` the step is recorded, so the outer gradient includes the
    Hessian-vector products through it (second order). ``first_order`` stops the gradient of ∇L, which
    is the first-order MAML approximation (the outer gradient then treats ∇L as a constant).
    Returns the new parameters and the loss at the old ones.
    """
    params = [tf.convert_to_tensor(p) for p in params]
    adapted = [i for i, lr in enumerate(learning_rates) if lr is not None]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for i in adapted:
            tape.watch(params[i])
        loss = loss_fn(params)
    grads = tape.gradient(loss, [params[i] for i in adapted], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    new_params = list(params)
    for i, grad in zip(adapted, grads):
        if first_order:
            grad = tf.stop_gradient(grad)
        new_params[i] = params[i] - tf.cast(learning_rates[i], params[i].dtype) * grad
    return new_params, loss


def adapt(
    params: Sequence[tf.Tensor],
    loss_fn: Callable[[Sequence[tf.Tensor]], tf.Tensor],
    learning_rates: Sequence[tf.Tensor | None],
    steps: int,
    first_order: bool,
    on_step: Callable[[int, list[tf.Tensor]], None] | None = None,
) -> list[tf.Tensor]:
    """``steps`` gradient steps (unrolled at trace time, so the graph is static and differentiable).

    ``on_step(k, params)`` is called with the parameters after k steps for k = 0..steps, which lets
    evaluation read predictions after every step from one adaptation.
    """
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}.")
    params = list(params)
    if on_step is not None:
        on_step(0, params)
    for k in range(steps):
        params, _ = gradient_step(params, loss_fn, learning_rates, first_order)
        if on_step is not None:
            on_step(k + 1, params)
    return params
