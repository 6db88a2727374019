import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import tf_maml.rl
from tf_maml.rl.envs import ENV_IDS, make_policy_env, parse_task, register_envs

MUJOCO = [i for i in ENV_IDS if "Navigation" not in i]


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_check_env_and_task_api(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MuJoCo rendering needs a display/GL context; these envs are used headless.
        check_env(env.unwrapped, skip_render_check=env_id in MUJOCO)
    tasks = env.unwrapped.sample_tasks(5, seed=3)
    assert tasks == env.unwrapped.sample_tasks(5, seed=3)
    assert tasks != env.unwrapped.sample_tasks(5, seed=4)
    assert json.loads(json.dumps(tasks)) == tasks
    env.reset(seed=0, options={"task": tasks[2]})
    assert env.unwrapped.task == tasks[2]
    env.reset(seed=1)  # a plain reset keeps the task
    assert env.unwrapped.task == tasks[2]
    assert env.spec.max_episode_steps == ENV_IDS[env_id][1]
    env.close()


def test_register_is_idempotent():
    # gymnasium only warns when an id is registered again (and replaces its spec): a second registration,
    # or a reload of the package, must leave the registry as it was and warn nothing.
    import importlib

    register_envs()
    before = dict(gym.registry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        importlib.reload(tf_maml.rl)
    assert dict(gym.registry) == before
    assert all(gym.registry[env_id] is before[env_id] for env_id in ENV_IDS)


def test_task_distributions():
    nav = gym.make("tf_maml/Navigation2D-v0").unwrapped
    goals = np.array([t["goal"] for t in nav.sample_tasks(500, seed=0)])
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.2
    vel = np.array([t["velocity"] for t in gym.make("tf_maml/HalfCheetahVel-v0").unwrapped.sample_tasks(300, 0)])
    assert vel.min() >= 0 and vel.max() <= 2 and vel.max() > 1.8
    ant = np.array([t["velocity"] for t in gym.make("tf_maml/AntVel-v0").unwrapped.sample_tasks(300, 0)])
    assert ant.max() <= 3 and ant.max() > 2.5
    dirs = {t["direction"] for t in gym.make("tf_maml/AntDir-v0").unwrapped.sample_tasks(50, 0)}
    assert dirs == {-1, 1}


def test_navigation_reward_by_hand():
    env = gym.make("tf_maml/Navigation2D-v0")
    obs, _ = env.reset(options={"task": {"goal": [0.3, -0.2]}})
    np.testing.assert_allclose(obs, [0, 0])
    obs, r, term, trunc, _ = env.step(np.array([0.5, -0.05], np.float32))  # x clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05], atol=1e-7)
    assert r == pytest.approx(-np.hypot(0.3 - 0.1, -0.2 + 0.05))
    assert not term and not trunc
    for _ in range(98):
        _, _, term, trunc, _ = env.step(np.zeros(2, np.float32))
        assert not trunc
    _, r, term, trunc, _ = env.step(np.zeros(2, np.float32))
    assert trunc and not term  # horizon 100


def test_navigation_ends_at_the_goal():
    env = gym.make("tf_maml/Navigation2D-v0")
    env.reset(options={"task": {"goal": [0.15, -0.05]}})
    _, _, term, _, _ = env.step(np.array([0.1, -0.05], np.float32))
    assert not term  # 0.05 away on x
    _, r, term, trunc, _ = env.step(np.array([0.045, 0.005], np.float32))
    assert term and not trunc and r == pytest.approx(-np.hypot(0.005, 0.005))  # within 0.01 on both axes


def test_policy_env_rescales_unit_actions_to_the_env_bounds():
    policy_env = make_policy_env("tf_maml/Navigation2D-v0")
    policy_env.reset(options={"task": {"goal": [0.3, 0.3]}})
    obs, *_ = policy_env.step(np.array([0.5, -3.0], np.float32))  # 0.5 -> 0.05; -3 clipped to -1 -> -0.1
    np.testing.assert_allclose(obs, [0.05, -0.1], atol=1e-7)
    cheetah = make_policy_env("tf_maml/HalfCheetahVel-v0")  # already [-1, 1]: only clipped
    raw = gym.make("tf_maml/HalfCheetahVel-v0")
    for env in (cheetah, raw):
        env.reset(seed=0)
    a = np.array([0.3, -0.2, 0.9, 2.0, -0.5, 0.1], np.float32)
    np.testing.assert_allclose(cheetah.step(a)[0], raw.step(np.clip(a, -1, 1))[0], atol=1e-6)


@pytest.mark.parametrize("env_id", ["tf_maml/HalfCheetahVel-v0", "tf_maml/HalfCheetahDir-v0"])
def test_cheetah_reward_by_hand(env_id):
    env = gym.make(env_id)
    task = env.unwrapped.sample_tasks(1, seed=5)[0]
    env.reset(seed=0, options={"task": task})
    a = np.linspace(-0.9, 0.9, 6).astype(np.float32)
    x0 = env.unwrapped.data.qpos[0]
    _, r, _, _, info = env.step(a)
    v = (env.unwrapped.data.qpos[0] - x0) / env.unwrapped.dt
    ctrl = 0.05 * np.sum(np.square(a))
    expected = -abs(v - task["velocity"]) - ctrl if "velocity" in task else task["direction"] * v - ctrl
    assert r == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("env_id", ["tf_maml/AntVel-v0", "tf_maml/AntDir-v0", "tf_maml/AntVel-v1", "tf_maml/AntDir-v1"])
def test_ant_reward_by_hand(env_id):
    env = gym.make(env_id)
    task = env.unwrapped.sample_tasks(1, seed=2)[0]
    env.reset(seed=0, options={"task": task})
    a = np.linspace(-0.8, 0.8, 8).astype(np.float32)
    xy0 = env.unwrapped.data.body(1).xpos[:2].copy()
    _, r, term, _, _ = env.step(a)
    u = env.unwrapped
    v = (u.data.body(1).xpos[0] - xy0[0]) / u.dt
    # The MAML reference code's Ant (rllab ant_env_rand*): +1 on the velocity term, survive 0.05,
    # control 0.5e-2 on the [-1, 1] action, contact 0.5e-3 on the clipped external forces.
    forward = -abs(v - task["velocity"]) + 1.0 if "velocity" in task else task["direction"] * v
    contact = 5e-4 * np.sum(np.square(np.clip(u.data.cfrc_ext, -1, 1)))
    healthy = float(np.isfinite(u.state_vector()).all() and 0.2 <= u.state_vector()[2] <= 1.0)
    expected = forward + 0.05 * healthy - 0.005 * np.sum(np.square(a)) - contact
    assert r == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert term == (healthy == 0.0)


def test_ant_v1_steps_every_0_02_s_and_its_episodes_outlast_v0s_under_the_initial_noise():
    """rllab's Ant control step; under gymnasium's 0.05 s the torso leaves the healthy range within ~50 steps."""
    mean_length = {}
    for env_id in ("tf_maml/AntDir-v0", "tf_maml/AntDir-v1"):
        env = gym.make(env_id)
        rng = np.random.default_rng(0)
        lengths = []
        for episode in range(4):
            env.reset(seed=episode, options={"task": {"direction": 1}})
            for t in range(200):
                _, _, terminated, truncated, _ = env.step(np.clip(rng.normal(0, 1, 8), -1, 1).astype(np.float32))
                if terminated or truncated:
                    break
            lengths.append(t + 1)
        mean_length[env_id] = np.mean(lengths)
    assert gym.make("tf_maml/AntDir-v1").unwrapped.dt == pytest.approx(0.02)
    assert gym.make("tf_maml/AntDir-v0").unwrapped.dt == pytest.approx(0.05)
    assert mean_length["tf_maml/AntDir-v1"] > 150 > 2 * mean_length["tf_maml/AntDir-v0"], mean_length


def test_parse_task_canonicalises_or_says_what_a_task_looks_like():
    assert parse_task("tf_maml/HalfCheetahVel-v0", '{"velocity": 1}') == {"velocity": 1.0}
    assert parse_task("tf_maml/AntDir-v0", {"direction": -1}) == {"direction": -1}
    assert parse_task("tf_maml/HalfCheetahDir-v0", '{"direction": 1.0}') == {"direction": 1}
    for bad in ('{"direction": 0}', '{"direction": 1.5}', '{"direction": true}'):
        with pytest.raises(ValueError, match=r"direction must be -1 or 1"):
            parse_task("tf_maml/HalfCheetahDir-v0", bad)
    with pytest.raises(ValueError, match=r"velocity must be a finite number"):
        parse_task("tf_maml/HalfCheetahVel-v0", '{"velocity": NaN}')
    with pytest.raises(ValueError, match=r"goal must have 2 finite coordinates"):
        parse_task("tf_maml/Navigation2D-v0", '{"goal": [0.1, Infinity]}')
    with pytest.raises(ValueError, match=r"not a task of tf_maml/AntVel-v0 .*KeyError.*look like \{\"velocity\": "):
        parse_task("tf_maml/AntVel-v0", '{"speed": 1.0}')
    with pytest.raises(ValueError, match="a task is a JSON object"):
        parse_task("tf_maml/AntVel-v0", "[1.0]")
