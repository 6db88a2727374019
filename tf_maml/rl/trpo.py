"""TRPO machinery (Schulman et al. 2015): conjugate gradient, Hessian-vector products, line search.

Parameters are handled as one flat vector here; MAML-TRPO supplies closures that unflatten them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(flat: tf.Tensor, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    sizes = [int(np.prod(t.shape)) for t in like]
    return [tf.reshape(p, t.shape) for p, t in zip(tf.split(flat, sizes), like)]


def hessian_vector_product(
    fn: Callable[[list[tf.Tensor]], tf.Tensor], params: Sequence[tf.Tensor], vector: Sequence[tf.Tensor]
) -> list[tf.Tensor]:
    """``∇²f(θ)·v`` by double back-propagation: the gradient of ``∇f(θ)·v`` (v held constant)."""
    params = [tf.convert_to_tensor(p) for p in params]
    with tf.GradientTape(watch_accessed_variables=False) as outer:
        outer.watch(params)
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            inner.watch(params)
            value = fn(params)
        grads = inner.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grad_dot_v = tf.add_n([tf.reduce_sum(g * tf.stop_gradient(v)) for g, v in zip(grads, vector)])
    return outer.gradient(grad_dot_v, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def conjugate_gradient(
    matvec: Callable[[tf.Tensor], tf.Tensor], b: tf.Tensor, iterations: int = 10, residual_tol: float = 1e-10
) -> tf.Tensor:
    """Approximately solve ``A x = b`` for SPD ``A`` given only ``x ↦ A x`` (never forms A).

    Runs eagerly (stops once the residual is below ``residual_tol``) or inside a ``tf.function`` (the loop
    is unrolled; iterations after convergence leave ``x`` unchanged).
    """
    x = tf.zeros_like(b)
    r = tf.identity(b)
    p = tf.identity(b)
    rr = tf.reduce_sum(r * r)
    for _ in range(iterations):
        if tf.executing_eagerly() and float(rr) < residual_tol:
            break
        ap = matvec(p)
        active = tf.cast(rr >= residual_tol, b.dtype)
        alpha = active * rr / (tf.reduce_sum(p * ap) + 1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = tf.reduce_sum(r * r)
        p = r + tf.math.divide_no_nan(rr_new, rr) * p
        rr = rr_new
    return x


def gauss_newton_vector_product(
    outputs_fn: Callable[[tf.Tensor], Sequence[tf.Tensor]],
    divergence_fn: Callable[[Sequence[tf.Tensor]], tf.Tensor],
    theta: tf.Tensor,
    vector: tf.Tensor,
) -> tf.Tensor:
    """``Jᵀ ∇²D J v``: J the Jacobian of ``outputs_fn`` (e.g. the policy's distribution parameters) at θ, ∇²D the
    Hessian of ``divergence_fn`` in those outputs.

    This is the Hessian of ``D(outputs_fn(θ))`` wherever D's gradient in the outputs is zero, as a KL from the
    sampling policy is at that policy: there TRPO's Fisher-vector product needs no third derivatives. One
    forward pass carries J v (forward mode), one backward pass Jᵀ·; so it traces once for any ``vector``
    (double back-propagation of a recorded pass needs a new gradient graph per product).
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(theta)
        with tf.autodiff.ForwardAccumulator(theta, vector) as acc:
            outputs = list(outputs_fn(theta))
        tangents = [acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO) for o in outputs]
    at = [tf.stop_gradient(o) for o in outputs]
    curved = hessian_vector_product(divergence_fn, at, tangents)
    return tape.gradient(outputs, theta, output_gradients=curved, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def natural_gradient(
    grad: tf.Tensor, fisher_vector_product: Callable[[tf.Tensor], tf.Tensor], cg_iters: int = 10, damping: float = 1e-5
) -> tuple[tf.Tensor, tf.Tensor]:
    """TRPO's search direction ``x ≈ (F + damping·I)⁻¹ g`` by conjugate gradient, given ``v ↦ F v``.

    Returns ``(x, xᵀ(F + damping·I)x)``; the second sets the step length for a KL budget.
    """

    def damped(v: tf.Tensor) -> tf.Tensor:
        return fisher_vector_product(v) + damping * v

    direction = conjugate_gradient(damped, grad, cg_iters)
    return direction, tf.reduce_sum(direction * damped(direction))


@dataclass
class LineSearchResult:
    accepted: bool
    step_fraction: float  # fraction of the full natural step taken (0 when rejected)
    steps_tried: int
    loss: float
    kl: float


def backtracking_line_search(
    loss_and_kl: Callable[[tf.Tensor], tuple[float, float]],
    theta: tf.Tensor,
    full_step: tf.Tensor,
    old_loss: float,
    max_kl: float = 0.01,
    max_steps: int = 15,
    ratio: float = 0.8,
) -> tuple[tf.Tensor, LineSearchResult]:
    """Shrink ``θ − ratio^k · step`` until the loss improves and KL ≤ max_kl; else keep θ.

    ``loss_and_kl(θ_candidate)`` returns the surrogate loss (to minimise) and the mean KL from the
    sampling policy. Rejecting every step keeps the parameters, which is TRPO's safe fallback.
    """
    fraction = 1.0
    loss, kl = old_loss, 0.0
    for k in range(max_steps):
        candidate = theta - fraction * full_step
        loss, kl = loss_and_kl(candidate)
        if np.isfinite(loss) and np.isfinite(kl) and loss < old_loss and kl <= max_kl:
            return candidate, LineSearchResult(True, fraction, k + 1, float(loss), float(kl))
        fraction *= ratio
    return theta, LineSearchResult(False, 0.0, max_steps, float(loss), float(kl))
