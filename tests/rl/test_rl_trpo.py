import numpy as np
import pytest
import tensorflow as tf

from tf_maml.rl.trpo import (
    backtracking_line_search,
    conjugate_gradient,
    flatten,
    hessian_vector_product,
    natural_gradient,
    unflatten,
)


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    a = m @ m.T + 6 * np.eye(6)
    b = rng.normal(size=6)
    at = tf.constant(a)
    x = conjugate_gradient(lambda v: tf.linalg.matvec(at, v), tf.constant(b), iterations=10)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    x2 = conjugate_gradient(lambda v: tf.linalg.matvec(at, v), tf.constant(b), iterations=2)
    assert np.linalg.norm(x2.numpy() - np.linalg.solve(a, b)) > 1e-6  # truncated CG is approximate
    # in a graph the loop is unrolled; iterations past convergence must leave the solution alone
    in_graph = tf.function(lambda bb: conjugate_gradient(lambda v: tf.linalg.matvec(at, v), bb, iterations=30))
    np.testing.assert_allclose(in_graph(tf.constant(b)).numpy(), np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    assert np.all(in_graph(tf.zeros(6, tf.float64)).numpy() == 0)


@pytest.mark.parametrize("compiled", [False, True])
def test_natural_gradient_solves_the_damped_kl_hessian_system(compiled):
    """One shared forward pass gives the loss gradient g and x = (H + d·I)⁻¹ g with H the KL's Hessian, here
    checked against the exact Hessian of a small non-quadratic KL-like function (its Jacobian by tapes)."""
    rng = np.random.default_rng(2)
    theta = tf.constant(rng.normal(size=5))
    w = tf.constant(rng.normal(size=(5, 5)))

    def loss_and_kl(t):
        loss = tf.reduce_sum(tf.sin(t) * tf.range(5, dtype=t.dtype))
        return loss, 0.1 * tf.reduce_sum(tf.exp(tf.linalg.matvec(w, t))) + tf.reduce_sum(t**4)

    fn = tf.function(natural_gradient) if compiled else natural_gradient
    loss, grad, x, curvature = fn(loss_and_kl, theta, 5, 1e-3)
    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            kl = loss_and_kl(theta)[1]
        g_kl = inner.gradient(kl, theta)
    hessian = outer.jacobian(g_kl, theta).numpy() + 1e-3 * np.eye(5)
    g = np.arange(5) * np.cos(theta.numpy())
    np.testing.assert_allclose(float(loss), loss_and_kl(theta)[0].numpy())
    np.testing.assert_allclose(grad.numpy(), g, rtol=1e-10)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(hessian, g), rtol=1e-6)  # 5 CG steps in 5 dimensions
    np.testing.assert_allclose(float(curvature), x.numpy() @ hessian @ x.numpy(), rtol=1e-6)


def test_hessian_vector_product_matches_finite_differences():
    rng = np.random.default_rng(1)
    params = [tf.constant(rng.normal(size=(3, 2))), tf.constant(rng.normal(size=(2,)))]
    v = [tf.constant(rng.normal(size=(3, 2))), tf.constant(rng.normal(size=(2,)))]

    def f(p):
        return tf.reduce_sum(tf.sin(p[0]) ** 2 * tf.exp(p[1])) + tf.reduce_sum(p[0] ** 3) * tf.reduce_sum(p[1])

    def grad(p):
        with tf.GradientTape() as t:
            t.watch(p)
            y = f(p)
        return flatten(t.gradient(y, p))

    hv = flatten(hessian_vector_product(f, params, v)).numpy()
    eps = 1e-5
    plus = [p + eps * d for p, d in zip(params, v)]
    minus = [p - eps * d for p, d in zip(params, v)]
    fd = (grad(plus) - grad(minus)).numpy() / (2 * eps)
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-8)


def test_flatten_roundtrip():
    like = [tf.zeros((2, 3)), tf.zeros((4,))]
    flat = tf.range(10, dtype=tf.float32)
    back = unflatten(flat, like)
    assert [b.shape for b in back] == [(2, 3), (4,)]
    np.testing.assert_array_equal(flatten(back).numpy(), flat.numpy())


def test_line_search_respects_max_kl():
    theta = tf.constant([0.0, 0.0])
    step = tf.constant([-2.0, 0.0])  # θ − step moves towards +x, which lowers the loss

    def loss_and_kl(c):
        c = c.numpy()
        return float((c[0] - 3.0) ** 2), float(0.05 * c[0] ** 2)  # KL grows with the step

    new, res = backtracking_line_search(loss_and_kl, theta, step, old_loss=9.0, max_kl=0.01, max_steps=15, ratio=0.8)
    assert res.accepted
    assert res.kl <= 0.01
    assert res.step_fraction < 1.0  # the full step (KL 0.2) was shrunk
    assert res.step_fraction == pytest.approx(0.8 ** (res.steps_tried - 1))
    assert 0.05 * (new.numpy()[0]) ** 2 <= 0.01 and new.numpy()[0] > 0


def test_line_search_rejects_and_keeps_parameters():
    theta = tf.constant([1.0])
    new, res = backtracking_line_search(lambda c: (5.0, 0.0), theta, tf.constant([1.0]), old_loss=1.0)
    assert not res.accepted and res.steps_tried == 15 and res.step_fraction == 0.0
    np.testing.assert_array_equal(new.numpy(), theta.numpy())
