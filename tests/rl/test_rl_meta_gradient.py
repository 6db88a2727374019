"""The inner policy-gradient step and MAML's second-order meta-gradient against float64 finite differences."""

import numpy as np
import pytest
import tensorflow as tf

from tf_maml.rl.maml_trpo import PGData, inner_update, pack_rows, per_task, pg_loss, tile_params
from tf_maml.rl.policy import build_policy, distribution, kl_divergence, log_prob, policy_params
from tf_maml.rl.trpo import flatten, gauss_newton_vector_product, hessian_vector_product, unflatten

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
    """Post-update TRPO surrogate and KL (old = the adapted policy at the unperturbed θ), and the KL's
    Fisher-vector product at θ in the Gauss-Newton form that MAML-TRPO uses.

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

    def kl_of(mean, log_std):
        return tf.reduce_sum(kl_divergence(old_mean, old_log_std, mean, log_std) * post.mask) / tf.reduce_sum(post.mask)

    def kl(theta):
        return kl_of(*dist(adapted(theta)))

    def fisher_vector_product(v):
        return gauss_newton_vector_product(lambda t: dist(adapted(t)), lambda d: kl_of(*d), theta0, v)

    return theta0, tf.function(surrogate), tf.function(kl), fisher_vector_product


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(setup, steps):
    model, params, pre, post = setup
    theta, surrogate, _, _ = _meta_objective(model, params, pre, post, first_order=False, steps=steps)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        y = surrogate(theta)
    exact = tape.gradient(y, theta).numpy()
    fd = fd_grad(lambda t: float(surrogate(t)), theta)
    np.testing.assert_allclose(exact, fd, rtol=1e-5, atol=1e-8)

    _, surrogate_fo, _, _ = _meta_objective(model, params, pre, post, first_order=True, steps=steps)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        y_fo = surrogate_fo(theta)
    first = tape.gradient(y_fo, theta).numpy()
    assert float(y_fo) == pytest.approx(float(y))  # same value, different gradient
    # first-order MAML drops the Hessian term: it must be measurably off where second order is exact
    assert np.abs(first - fd).max() > 100 * np.abs(exact - fd).max()


@pytest.mark.parametrize(
    "first_order, steps, clamped",
    [(False, 1, False), (True, 1, False), (False, 0, False), (False, 2, False), (False, 1, True)],
)
def test_kl_hessian_vector_product_through_inner_update(setup, first_order, steps, clamped):
    """Double back-propagation against finite differences of the KL's gradient, and the Gauss-Newton product
    (one forward-mode and one reverse pass, no third derivatives) against it: equal at the old policy, with 0, 1
    or 2 inner steps and with the log-std at its floor. First order, the tapes treat the inner gradient as a
    constant, so finite differences of it are not the reference."""
    model, params, pre, post = setup
    if clamped:  # one action axis below the policy head's floor, log(1e-6)
        params = [*params[:-1], tf.constant([-20.0, -0.3], tf.float64)]
    theta, _, kl, fisher_vector_product = _meta_objective(model, params, pre, post, first_order, steps)
    v = tf.constant(np.random.default_rng(5).normal(size=theta.shape))
    (hv,) = hessian_vector_product(lambda p: kl(p[0]), [theta], [v])

    def grad(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = kl(t)
        return tape.gradient(y, t).numpy()

    if not first_order:
        eps = 1e-5
        fd = (grad(theta + eps * v) - grad(theta - eps * v)) / (2 * eps)
        np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(fisher_vector_product(v).numpy(), hv.numpy(), rtol=1e-9, atol=1e-12)
    assert float(kl(theta)) == pytest.approx(0.0, abs=1e-12)
    assert float(tf.reduce_sum(v * hv)) > 0  # KL Hessian is PSD at the old policy
    if clamped:  # the floored log-std weight moves nothing
        assert float(hv[-2]) == 0.0


def test_pack_rows_first_fit_decreasing():
    lengths = [[6, 3, 2, 1, 4], [6, 6, 0, 0, 0]]
    mask = np.array([[[1.0] * n + [0.0] * (6 - n) for n in task] for task in lengths])
    x = np.arange(60.0).reshape(2, 5, 6) * mask
    packed_mask, packed_x = pack_rows(mask, x)
    # rows of task 0: [6], [4, 2], [3, 1]; task 1 keeps its two full episodes and a padding row
    np.testing.assert_array_equal(packed_mask.sum(axis=-1), [[6, 6, 4], [6, 6, 0]])
    np.testing.assert_array_equal(packed_x[0], [[0, 1, 2, 3, 4, 5], [24, 25, 26, 27, 12, 13], [6, 7, 8, 18, 0, 0]])
    np.testing.assert_array_equal(packed_x[1, :2], x[1, :2])
    mask[0, 1, 4] = 1.0  # a gap inside a row: its steps are not one episode from the row's start
    with pytest.raises(ValueError, match="a row with a gap would lose steps"):
        pack_rows(mask, x)


def test_packed_rows_give_the_same_second_order_meta_gradient(setup):
    """The update sums over masked steps only, so packing several episodes into a row changes nothing."""
    model, params, _, _ = setup
    rng = np.random.default_rng(1)
    lengths = [[3, 1, 2, 1, 1], [2, 2, 0, 3, 1]]
    mask = np.array([[[1.0] * n + [0.0] * (H - n) for n in task] for task in lengths])
    obs = rng.normal(size=(T, 5, H, OBS)) * mask[..., None]
    actions = rng.normal(size=(T, 5, H, ACT)) * mask[..., None]
    advantages = rng.normal(size=(T, 5, H)) * mask
    packed = pack_rows(mask, obs, actions, advantages)
    assert packed[0].shape == (T, 3, H) and packed[0].sum() == mask.sum()
    layouts = [PGData(*(tf.constant(x) for x in (obs, actions, advantages, mask))),
               PGData(*(tf.constant(x) for x in packed[1:] + packed[:1]))]
    theta = flatten(params)

    def loss_and_meta_gradient(data):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            adapted = inner_update(model, tile_params(unflatten(theta, params), T), data, LR, 1, False, True)
            loss = tf.reduce_sum(per_task(lambda p, *d: pg_loss(model, p, *d), adapted, data, True))
        return loss.numpy(), tape.gradient(loss, theta).numpy()

    (loss_a, grad_a), (loss_b, grad_b) = map(loss_and_meta_gradient, layouts)
    assert np.abs(grad_a).max() > 1e-3
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-12)
    np.testing.assert_allclose(grad_b, grad_a, rtol=1e-10, atol=1e-12)
