"""Advantage estimation: rllab's linear feature baseline, GAE and normalisation.

All functions take padded batches ``[..., N, H]`` (episodes × horizon) with a 0/1 mask, numpy in and
out: this runs once per batch between sampling and the TensorFlow update, so numpy is simplest.
"""

from __future__ import annotations

import numpy as np


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """``R_t = Σ_k γ^k r_{t+k}`` within each (masked) episode, shape ``[..., H]``."""
    rewards = rewards * mask
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[:-1], dtype=np.float64)
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running * mask[..., t]
        out[..., t] = running
    return out * mask


def baseline_features(obs: np.ndarray) -> np.ndarray:
    """rllab's features ``[o, o², t, t², t³, 1]`` with ``t = step/100`` and o clipped to ±10."""
    obs = np.clip(obs, -10.0, 10.0)
    horizon = obs.shape[-2]
    t = np.arange(horizon, dtype=np.float64) / 100.0
    t = np.broadcast_to(t[:, None], obs.shape[:-1] + (1,))
    ones = np.ones_like(t)
    return np.concatenate([obs, obs**2, t, t**2, t**3, ones], axis=-1)


class LinearFeatureBaseline:
    """Ridge-regularised least squares of returns on :func:`baseline_features` (rllab).

    The regulariser starts at ``reg_coeff`` and grows ×10 (up to 5 times) until the solution is
    finite, which is rllab's guard against rank-deficient features (e.g. constant observations).
    """

    def __init__(self, reg_coeff: float = 1e-5) -> None:
        self.reg_coeff = reg_coeff
        self.coeffs: np.ndarray | None = None

    def fit(self, obs: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> "LinearFeatureBaseline":
        """Fit on episodes ``obs [N, H, d]``, ``returns [N, H]``, using only unmasked steps."""
        feats = baseline_features(obs.astype(np.float64))
        valid = mask.astype(bool)
        x, y = feats[valid], returns[valid].astype(np.float64)
        reg = self.reg_coeff
        eye = np.eye(x.shape[1])
        for _ in range(5):
            coeffs = np.linalg.lstsq(x.T @ x + reg * eye, x.T @ y, rcond=None)[0]
            if np.all(np.isfinite(coeffs)):
                break
            reg *= 10.0
        self.coeffs = coeffs
        return self

    def predict(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.coeffs is None:
            return np.zeros(obs.shape[:-1])
        return (baseline_features(obs.astype(np.float64)) @ self.coeffs) * mask


def gae(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float = 0.99, lam: float = 1.0
) -> np.ndarray:
    """Generalised advantage estimation ``A_t = Σ_k (γλ)^k δ_{t+k}``, ``δ_t = r_t + γV(s_{t+1}) − V(s_t)``.

    The value after the last valid step is 0 (episodes are cut at the horizon, as in rllab). With
    λ = 1 this is ``R_t − V(s_t)``.
    """
    rewards = rewards * mask
    values = values * mask
    next_values = np.concatenate([values[..., 1:], np.zeros_like(values[..., :1])], axis=-1)
    next_mask = np.concatenate([mask[..., 1:], np.zeros_like(mask[..., :1])], axis=-1)
    deltas = (rewards + gamma * next_values * next_mask - values) * mask
    adv = np.zeros_like(deltas, dtype=np.float64)
    running = np.zeros(deltas.shape[:-1], dtype=np.float64)
    for t in range(deltas.shape[-1] - 1, -1, -1):
        running = deltas[..., t] + gamma * lam * running * next_mask[..., t]
        adv[..., t] = running
    return adv * mask


def normalize(adv: np.ndarray, mask: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Zero mean, unit std over the unmasked entries (per call: per task in MAML-TRPO)."""
    valid = mask.astype(bool)
    mean = adv[valid].mean()
    std = adv[valid].std()
    return (adv - mean) / (std + eps) * mask


def task_advantages(
    obs: np.ndarray,
    rewards: np.ndarray,
    mask: np.ndarray,
    gamma: float = 0.99,
    lam: float = 1.0,
    normalize_advantages: bool = True,
) -> np.ndarray:
    """Advantages for a batch with a task axis ``[T, N, H]``: one baseline fitted per task."""
    out = np.zeros(rewards.shape, dtype=np.float32)
    for i in range(rewards.shape[0]):
        returns = discounted_returns(rewards[i], mask[i], gamma)
        baseline = LinearFeatureBaseline().fit(obs[i], returns, mask[i])
        adv = gae(rewards[i], baseline.predict(obs[i], mask[i]), mask[i], gamma, lam)
        out[i] = normalize(adv, mask[i]) if normalize_advantages else adv
    return out
