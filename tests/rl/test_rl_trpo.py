import numpy as np
import pytest
import tensorflow as tf

from tf_maml.rl.trpo import (
    backtracking_line_search,
    conjugate_gradient,
    flatten,
    gauss_newton_vector_product,
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


def test_natural_gradient_solves_the_damped_system():
    """x = (F + d·I)⁻¹ g from products with F alone; the curvature is xᵀ(F + d·I)x."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 5))
    fisher = a @ a.T
    g = tf.constant(rng.normal(size=5))
    x, curvature = natural_gradient(g, lambda v: tf.linalg.matvec(tf.constant(fisher), v), 5, 1e-3)
    damped = fisher + 1e-3 * np.eye(5)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(damped, g.numpy()), rtol=1e-6)  # 5 CG steps in 5 dims
    np.testing.assert_allclose(float(curvature), x.numpy() @ damped @ x.numpy(), rtol=1e-8)


@pytest.mark.parametrize("compiled", [False, True])
def test_gauss_newton_product_is_the_hessian_where_the_divergence_is_stationary(compiled):
    """Jᵀ∇²D J v equals the Hessian of D(f(θ)) times v when ∇D = 0 at f(θ) (a KL at the sampling policy), for
    a non-linear f; away from that point it drops D's gradient term, so the two differ."""
    rng = np.random.default_rng(3)
    w = tf.constant(rng.normal(size=(4, 3)))
    theta = tf.constant(rng.normal(size=3))
    v = tf.constant(rng.normal(size=3))

    def outputs(t):
        h = tf.tanh(tf.linalg.matvec(w, t))
        return [h, tf.sin(t)]

    def divergence_at(anchor):
        def d(out):  # ≥ 0, zero with zero gradient at ``anchor``, not quadratic
            return sum(tf.reduce_sum(tf.exp(o - a) - 1.0 - (o - a) + (o - a) ** 4) for o, a in zip(out, anchor))

        return d

    product = tf.function(gauss_newton_vector_product, autograph=False) if compiled else gauss_newton_vector_product
    at_theta = divergence_at(outputs(theta))
    gn = product(outputs, at_theta, theta, v)
    (hv,) = hessian_vector_product(lambda p: at_theta(outputs(p[0])), [theta], [v])
    np.testing.assert_allclose(gn.numpy(), hv.numpy(), rtol=1e-10)
    elsewhere = divergence_at(outputs(theta + 0.5))
    (hv_elsewhere,) = hessian_vector_product(lambda p: elsewhere(outputs(p[0])), [theta], [v])
    gn_elsewhere = product(outputs, elsewhere, theta, v)
    assert np.linalg.norm(gn_elsewhere.numpy() - hv_elsewhere.numpy()) > 1e-3 * np.linalg.norm(hv_elsewhere.numpy())


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
