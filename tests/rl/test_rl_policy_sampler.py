import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml.rl.policy import GaussianHead, build_policy, distribution, entropy, kl_divergence, log_prob, policy_params
from tf_maml.rl.maml_trpo import to_pg_data
from tf_maml.rl.sampler import Sampler, wave_layout


def test_gaussian_formulas_by_hand():
    mean = tf.constant([[0.5, -1.0]])
    log_std = tf.constant([[0.0, math.log(2.0)]])
    a = tf.constant([[1.5, 1.0]])
    expected = (-0.5 * 1.0**2 - 0.0 - 0.5 * math.log(2 * math.pi)) + (-0.5 * 1.0**2 - math.log(2) - 0.5 * math.log(2 * math.pi))
    assert float(log_prob(mean, log_std, a)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(entropy(log_std)[0]) == pytest.approx(1 + 0.5 * math.log(2 * math.pi) * 2 + math.log(2), rel=1e-6)
    # KL(N(0,1) || N(1, 2²)) = log 2 + (1 + 1) / 8 − 1/2 per dimension
    kl = kl_divergence(tf.zeros((1, 1)), tf.zeros((1, 1)), tf.ones((1, 1)), tf.fill((1, 1), math.log(2.0)))
    assert float(kl[0]) == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-6)
    assert float(kl_divergence(mean, log_std, mean, log_std)[0]) == pytest.approx(0.0, abs=1e-7)


def test_policy_architecture_substitution_and_serialisation(tmp_path):
    model = build_policy(5, 3, seed=1)
    assert [tuple(v.shape) for v in model.trainable_variables] == [(5, 100), (100,), (100, 100), (100,), (100, 3), (3,), (3,)]
    obs = np.random.default_rng(0).normal(size=(4, 7, 5)).astype(np.float32)
    mean, log_std = distribution(model, policy_params(model), obs)
    assert mean.shape == (4, 7, 3) and log_std.shape == (4, 7, 3)
    np.testing.assert_allclose(mean.numpy().reshape(-1, 3), model(obs.reshape(-1, 5)).numpy()[:, :3], atol=1e-5)
    shifted = policy_params(model)
    shifted[-1] = shifted[-1] + 1.0  # substituted log-std, model variables untouched
    _, log_std2 = distribution(model, shifted, obs)
    np.testing.assert_allclose(log_std2.numpy(), log_std.numpy() + 1.0, atol=1e-6)
    path = str(tmp_path / "policy.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("gaussian_head"), GaussianHead)
    np.testing.assert_allclose(loaded(obs[0]).numpy(), model(obs[0]).numpy(), atol=1e-6)


def test_log_std_floor_like_rllab_min_std():
    """A fast step can push the log-std far below zero; the policy's std stops at min_std (1e-6) and the
    floored coordinate gets no gradient, so the log-density stays finite."""
    model = build_policy(2, 2, seed=0)
    params = policy_params(model)
    params[-1] = tf.constant([-30.0, 0.5])
    obs = tf.ones((3, 2))
    with tf.GradientTape() as tape:
        tape.watch(params[-1])
        _, log_std = distribution(model, params, obs)
        total = tf.reduce_sum(log_std)
    np.testing.assert_allclose(log_std.numpy(), [[math.log(1e-6), 0.5]] * 3, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(total, params[-1]).numpy(), [0.0, 3.0])
    with pytest.raises(ValueError, match="min_std"):
        GaussianHead(min_std=0.0)
    assert GaussianHead.from_config(GaussianHead(min_std=1e-3).get_config()).min_std == 1e-3


def test_wave_layout():
    assert wave_layout(20, 20, 400) == (20, 20)
    assert wave_layout(3, 4, 10) == (2, 4)
    assert wave_layout(5, 20, 8) == (1, 5)


@pytest.mark.parametrize("num_envs", [400, 10, 3])
def test_sampler_shapes_rewards_and_seeds(num_envs):
    model = build_policy(2, 2, seed=0)
    sampler = Sampler("tf_maml/Navigation2D-v0", model, num_envs=num_envs)
    tasks = sampler.sample_tasks(3, seed=0)
    batch = sampler.sample(policy_params(model), tasks, n_traj=6, seed=11)
    assert batch.obs.shape == (3, 6, 100, 2) and batch.actions.shape == (3, 6, 100, 2)
    assert batch.rewards.shape == batch.mask.shape == (3, 6, 100)
    # an episode is a prefix of steps: it ends at the goal or after 100 steps
    assert batch.mask[..., 0].all() and (np.diff(batch.mask, axis=-1) <= 0).all() and batch.mask.mean() > 0.5
    # rewards are −distance after the move, for each task's own goal; the policy's [−1, 1] is a ±0.1 move
    goals = np.array([t["goal"] for t in tasks])[:, None, None, :]
    pos = batch.obs + np.clip(0.1 * batch.actions, -0.1, 0.1)
    valid = batch.mask > 0
    np.testing.assert_allclose(batch.rewards[valid], -np.linalg.norm(pos - goals, axis=-1)[valid], atol=1e-5)
    assert (batch.rewards[~valid] == 0).all()
    moved = valid[:, :, 1:]
    np.testing.assert_allclose(batch.obs[:, :, 1:][moved], pos[:, :, :-1][moved], atol=1e-5)
    again = sampler.sample(policy_params(model), tasks, n_traj=6, seed=11)
    np.testing.assert_array_equal(batch.actions, again.actions)
    other = sampler.sample(policy_params(model), tasks, n_traj=6, seed=12)
    assert not np.allclose(batch.actions, other.actions)
    # per-task parameters: a huge negative log-std for task 1 only (floored at std 1e-6) makes its actions
    # near-deterministic
    stacked = [tf.stack([p] * 3) for p in policy_params(model)]
    stacked[-1] = tf.tensor_scatter_nd_update(stacked[-1], [[1]], [[-20.0, -20.0]])
    per_task = sampler.sample(stacked, tasks, n_traj=6, seed=11, per_task_params=True)
    assert np.abs(per_task.actions[1, 0] - per_task.actions[1, 1]).max() < 1e-4
    assert np.abs(per_task.actions[0, 0] - per_task.actions[0, 1]).max() > 0.1
    sampler.close()


@pytest.mark.parametrize("num_envs", [6, 2])
def test_step_budget_keeps_whole_episodes_and_favours_the_short_ones(num_envs):
    """rllab's protocol: n_traj × horizon steps of whole episodes per task, so a task whose episodes end
    at once gets many (here 300 one-step episodes), one whose episodes run the horizon gets n_traj."""
    model = build_policy(2, 2, seed=0)
    params = policy_params(model)
    params[-3], params[-2] = tf.zeros_like(params[-3]), tf.zeros_like(params[-2])  # mean action 0 ...
    params[-1] = tf.fill(params[-1].shape, -20.0)  # ... and std 1e-6: the point stays at the origin
    sampler = Sampler("tf_maml/Navigation2D-v0", model, num_envs=num_envs)
    tasks = [{"goal": [0.005, 0.0]}, {"goal": [0.4, -0.3]}]  # reached at the first step / never
    steps = sampler.sample(params, tasks, n_traj=3, seed=0, budget="steps")
    assert steps.episodes().sum(axis=-1).tolist() == [300, 3] and steps.obs.shape == (2, 300, 100, 2)
    np.testing.assert_array_equal(steps.mask.sum(axis=(1, 2)), [300, 300])
    np.testing.assert_allclose(steps.task_returns(), [-0.005, -50.0], rtol=1e-4)  # padding is not averaged
    assert steps.mean_return() == pytest.approx((300 * -0.005 - 3 * 50.0) / 303, rel=1e-4)
    packed = to_pg_data(steps, 0.99, 1.0)  # the update's layout: the 300 one-step episodes fill 3 rows
    assert packed.obs.shape == (2, 3, 100, 2) and float(tf.reduce_sum(packed.mask)) == 600
    episodes = sampler.sample(params, tasks, n_traj=3, seed=0)
    assert episodes.obs.shape == (2, 3, 100, 2) and episodes.episodes().all()
    np.testing.assert_allclose(episodes.task_returns(), [-0.005, -50.0], rtol=1e-4)
    # a random policy: at least n_traj × horizon steps per task, of episodes that ended (goal or horizon)
    batch = sampler.sample(policy_params(model), sampler.sample_tasks(3, seed=1), n_traj=3, seed=2, budget="steps")
    lengths = batch.mask.sum(axis=-1)
    real = batch.episodes()
    assert (lengths.sum(axis=-1) >= 300).all() and (lengths.sum(axis=-1) < 300 + 3 * 100).all()
    assert (np.diff(batch.mask, axis=-1) <= 0).all() and (lengths[~real] == 0).all()
    goals = np.array([t["goal"] for t in batch.tasks])[:, None, :]
    for i, j in zip(*np.nonzero(real & (lengths < 100))):  # an early end is a goal reached
        n = int(lengths[i, j])
        end = batch.obs[i, j, n - 1] + np.clip(0.1 * batch.actions[i, j, n - 1], -0.1, 0.1)
        assert (np.abs(end - goals[i, 0]) < 0.01).all()
    # every kept episode, first or later in its env, starts at the origin and moves as the actions say
    valid = batch.mask > 0
    assert (batch.obs[real][:, 0] == 0).all()
    pos = batch.obs + np.clip(0.1 * batch.actions, -0.1, 0.1)
    np.testing.assert_allclose(batch.rewards[valid], -np.linalg.norm(pos - goals[:, None], axis=-1)[valid], atol=1e-5)
    moved = valid[:, :, 1:]
    np.testing.assert_allclose(batch.obs[:, :, 1:][moved], pos[:, :, :-1][moved], atol=1e-5)
    with pytest.raises(ValueError, match="budget='time'"):
        sampler.sample(params, tasks, n_traj=3, seed=0, budget="time")
    sampler.close()


def test_sampler_async_mujoco_with_termination():
    model = build_policy(105, 8, seed=0, init_log_std=1.5)  # wild actions make the Ant fall over
    sampler = Sampler("tf_maml/AntDir-v0", model, num_envs=2)
    assert sampler.asynchronous
    tasks = sampler.sample_tasks(2, seed=0)
    batch = sampler.sample(policy_params(model), tasks, n_traj=1, seed=0)
    assert batch.obs.shape == (2, 1, 200, 105)
    m = batch.mask
    assert (m[..., -1] == 0).any() and (m[..., 0] == 1).all()  # some episode really terminated early
    assert np.all(np.diff(m, axis=-1) <= 0)  # once done, masked for the rest of the horizon
    assert np.all(batch.rewards[m == 0] == 0)
    sampler.close()


def test_the_number_of_envs_changes_speed_not_episodes():
    """Seeds and action noise are keyed by episode slot, so any grouping of envs samples the same episodes, up to
    the round-off of the policy's batched float32 arithmetic (MuJoCo's contacts grow that within ~30 steps)."""
    batches = {}
    model = build_policy(2, 2, seed=0, init_log_std=-1.0)
    tasks = [{"goal": [0.02 * k, -0.01 * k]} for k in range(5)]  # the first at the start: short episodes
    for num_envs in (4, 8, 40):  # a step budget too, with one task per wave, two (the last padded) or all five
        sampler = Sampler("tf_maml/Navigation2D-v0", model, num_envs=num_envs)
        batches[num_envs] = sampler.sample(policy_params(model), tasks, n_traj=4, seed=5, budget="steps")
        sampler.close()
    assert batches[4].episodes()[0].sum() > 4
    for num_envs in (8, 40):
        np.testing.assert_array_equal(batches[4].mask, batches[num_envs].mask)
        np.testing.assert_allclose(batches[4].obs, batches[num_envs].obs, rtol=0, atol=1e-5)
    for env_id, obs_dim, act_dim in (("tf_maml/Navigation2D-v0", 2, 2), ("tf_maml/AntDir-v1", 105, 8)):
        model = build_policy(obs_dim, act_dim, seed=0, init_log_std=0.5)
        for num_envs in (3, 8, 40):
            sampler = Sampler(env_id, model, num_envs=num_envs, asynchronous=False)
            tasks = sampler.sample_tasks(5, seed=3)
            batches[env_id, num_envs] = sampler.sample(policy_params(model), tasks, n_traj=4, seed=5)
            sampler.close()
    for num_envs in (8, 40):
        a, b = batches["tf_maml/Navigation2D-v0", 3], batches["tf_maml/Navigation2D-v0", num_envs]
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.actions, b.actions, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.obs, b.obs, rtol=0, atol=1e-5)
        a, b = batches["tf_maml/AntDir-v1", 3], batches["tf_maml/AntDir-v1", num_envs]
        np.testing.assert_allclose(a.obs[:, :, :10], b.obs[:, :, :10], rtol=0, atol=1e-3)


def test_in_process_and_subprocess_vector_envs_sample_the_same_episodes():
    """The vector-env kind is a speed choice only: same seed, same episodes (terminations included)."""
    model = build_policy(105, 8, seed=0, init_log_std=1.5)
    batches = []
    for asynchronous in (True, False):
        sampler = Sampler("tf_maml/AntDir-v0", model, num_envs=2, asynchronous=asynchronous)
        assert sampler.asynchronous == asynchronous
        batches.append(sampler.sample(policy_params(model), sampler.sample_tasks(2, seed=3), n_traj=2, seed=5))
        sampler.close()
    a, b = batches
    assert (a.mask[..., -1] == 0).any()
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.obs, b.obs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.rewards, b.rewards, rtol=0, atol=1e-6)
