"""The inner policy-gradient step and MAML's second-order meta-gradient against float64 finite differences."""

import numpy as np
import pytest
import tensorflow as tf

from tf_maml.rl.maml_trpo import PGData, inner_update, per_task, pg_loss, tile_params
from tf_maml.rl.policy import build_policy, distribution, kl_divergence, log_prob, policy_params
from tf_maml.rl.trpo import flatten, hessian_vector_product, unflatten

T, N, H, OBS, ACT, LR = 2, 2, 3, 3, 2, 0.1


@pytest.fixture(scope="module")
def setup():
    model = build_policy(OBS, ACT, hidden=(4,), init_log_std=-0.3, seed=7, dtype="float64")
    rng = np.random.default_rng(0)
    params = [p + tf.constant(rng.normal(scale=0.1, size=p.shape)) for p in policy_params(model)]

    def data():
        mask = np.ones((T, N, H))
        mask[1, 1, 2] = 0.0
        return PGData(
            tf.constant(rng.normal(size=(T, N, H, OBS))),
            tf.constant(rng.normal(size=(T, N, H, ACT))),
            tf.constant(rng.normal(size=(T, N, H))),
            tf.constant(mask),
        )

    return model, params, data(), data()


def fd_grad(f, theta, eps=1e-6):
    theta = theta.numpy()
    g = np.zeros_like(theta)
    for k in range(theta.size):
        d = np.zeros_like(theta)
        d[k] = eps
        g[k] = (f(tf.constant(theta + d)) - f(tf.constant(theta - d))) / (2 * eps)
    return g


def test_inner_update_is_one_sgd_step_per_task(setup):
    model, params, pre, _ = setup
    theta = flatten(params)
    adapted = inner_update(model, tile_params(params, T), pre, LR, 1, False, vectorize=True)
    for i in range(T):
        task_data = [d[i] for d in pre]
        loss = tf.function(lambda t: pg_loss(model, unflatten(t, params), *task_data))
        grad = fd_grad(lambda t: float(loss(t)), theta)
        expected = theta.numpy() - LR * grad
        np.testing.assert_allclose(flatten([p[i] for p in adapted]).numpy(), expected, rtol=1e-6, atol=1e-8)


def test_vectorized_and_loop_agree(setup):
    model, params, pre, _ = setup
    a = inner_update(model, tile_params(params, T), pre, LR, 2, False, vectorize=True)
    b = inner_update(model, tile_params(params, T), pre, LR, 2, False, vectorize=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-10, atol=1e-12)


def _meta_objective(model, params_like, pre, post, first_order, steps=1):
    """Post-update TRPO surrogate and KL (old = the adapted policy at the unperturbed θ).

    Uses the task loop (cheaper to trace for T=2); ``test_vectorized_and_loop_agree`` ties it to pfor.
    """
    theta0 = flatten(params_like)

    def adapted(theta):
        return inner_update(model, tile_params(unflatten(theta, params_like), T), pre, LR, steps, first_order, False)

    def dist(stacked):
        out = per_task(lambda p, o: tf.concat(distribution(model, p, o), -1), stacked, (post.obs,), False)
        return tf.split(out, 2, axis=-1)

    old_mean, old_log_std = [tf.stop_gradient(x) for x in dist(adapted(theta0))]

    def surrogate(theta):
        mean, log_std = dist(adapted(theta))
        ratio = tf.exp(log_prob(mean, log_std, post.actions) - log_prob(old_mean, old_log_std, post.actions))
        return -tf.reduce_sum(ratio * post.advantages * post.mask) / tf.reduce_sum(post.mask)

    def kl(theta):
        mean, log_std = dist(adapted(theta))
        return tf.reduce_sum(kl_divergence(old_mean, old_log_std, mean, log_std) * post.mask) / tf.reduce_sum(post.mask)

    return theta0, tf.function(surrogate), tf.function(kl)


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(setup, steps):
    model, params, pre, post = setup
    theta, surrogate, _ = _meta_objective(model, params, pre, post, first_order=False, steps=steps)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        y = surrogate(theta)
    exact = tape.gradient(y, theta).numpy()
    fd = fd_grad(lambda t: float(surrogate(t)), theta)
    np.testing.assert_allclose(exact, fd, rtol=1e-5, atol=1e-8)

    _, surrogate_fo, _ = _meta_objective(model, params, pre, post, first_order=True, steps=steps)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        y_fo = surrogate_fo(theta)
    first = tape.gradient(y_fo, theta).numpy()
    assert float(y_fo) == pytest.approx(float(y))  # same value, different gradient
    # first-order MAML drops the Hessian term: it must be measurably off where second order is exact
    assert np.abs(first - fd).max() > 100 * np.abs(exact - fd).max()


def test_kl_hessian_vector_product_through_inner_update(setup):
    model, params, pre, post = setup
    theta, _, kl = _meta_objective(model, params, pre, post, first_order=False)
    v = tf.constant(np.random.default_rng(5).normal(size=theta.shape))
    (hv,) = hessian_vector_product(lambda p: kl(p[0]), [theta], [v])

    def grad(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = kl(t)
        return tape.gradient(y, t).numpy()

    eps = 1e-5
    fd = (grad(theta + eps * v) - grad(theta - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-5, atol=1e-9)
    assert float(kl(theta)) == pytest.approx(0.0, abs=1e-12)
    assert float(tf.reduce_sum(v * hv)) > 0  # KL Hessian is PSD at the old policy
