import numpy as np
import pytest

from tf_maml.rl.advantages import (
    LinearFeatureBaseline,
    baseline_features,
    discounted_returns,
    gae,
    normalize,
    task_advantages,
)


def test_gae_hand_computed():
    r = np.array([[1.0, 2.0, 3.0, 9.0]])
    v = np.array([[0.5, 1.0, 1.5, 7.0]])
    m = np.array([[1.0, 1.0, 1.0, 0.0]])  # episode of 3 steps padded to 4
    g, lam = 0.9, 0.8
    d0 = 1 + g * 1.0 - 0.5  # 1.4
    d1 = 2 + g * 1.5 - 1.0  # 2.35
    d2 = 3 + 0.0 - 1.5  # 1.5 (no bootstrap after the last step)
    expected = [d0 + g * lam * d1 + (g * lam) ** 2 * d2, d1 + g * lam * d2, d2, 0.0]
    np.testing.assert_allclose(gae(r, v, m, g, lam)[0], expected)


def test_gae_lambda_one_is_return_minus_value():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    m = np.ones((3, 6))
    m[1, 4:] = 0
    returns = discounted_returns(r, m, 0.99)
    np.testing.assert_allclose(gae(r, v, m, 0.99, 1.0), (returns - v) * m, atol=1e-12)
    np.testing.assert_allclose(returns[0, -1], r[0, -1])
    np.testing.assert_allclose(returns[1, 3], r[1, 3])  # the padded steps do not leak in


def test_linear_baseline_recovers_linear_returns():
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(8, 20, 3))
    mask = np.ones((8, 20))
    feats = baseline_features(obs)
    assert feats.shape == (8, 20, 2 * 3 + 4)
    np.testing.assert_allclose(feats[0, 7, -4:], [0.07, 0.07**2, 0.07**3, 1.0])
    w = rng.normal(size=feats.shape[-1])
    returns = feats @ w
    baseline = LinearFeatureBaseline().fit(obs, returns, mask)
    np.testing.assert_allclose(baseline.predict(obs, mask), returns, atol=1e-3)


def test_linear_baseline_reduces_variance_and_ignores_padding():
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(10, 15, 2))
    mask = np.ones((10, 15))
    mask[:, 10:] = 0
    returns = 3 * obs[..., 0] + rng.normal(scale=0.1, size=(10, 15))
    returns[mask == 0] = 1e6  # garbage on padded steps must not affect the fit
    pred = LinearFeatureBaseline().fit(obs, returns, mask).predict(obs, mask)
    resid = (returns - pred)[mask == 1]
    assert resid.std() < 0.2 * returns[mask == 1].std()
    assert np.all(pred[mask == 0] == 0)


def test_normalize_and_task_advantages():
    rng = np.random.default_rng(3)
    adv = rng.normal(5, 3, size=(4, 10))
    mask = np.ones_like(adv)
    mask[0, 5:] = 0
    out = normalize(adv, mask)
    assert out[mask == 1].mean() == pytest.approx(0, abs=1e-9)
    assert out[mask == 1].std() == pytest.approx(1, abs=1e-6)
    obs = rng.normal(size=(2, 4, 10, 2)).astype(np.float32)
    rew = rng.normal(size=(2, 4, 10)).astype(np.float32)
    m = np.ones((2, 4, 10), np.float32)
    a = task_advantages(obs, rew, m)
    assert a.shape == (2, 4, 10)
    for i in range(2):  # normalised per task
        assert a[i].mean() == pytest.approx(0, abs=1e-5)
