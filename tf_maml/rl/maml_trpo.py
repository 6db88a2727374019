"""MAML-TRPO (Finn et al. 2017, section 5.3): meta-learn a policy initialisation for fast adaptation.

Per iteration: sample a meta-batch of tasks; sample pre-update episodes with θ; take a differentiable
policy-gradient step per task (:func:`tf_maml.inner_loop.gradient_step`) to θ'_i; sample post-update
episodes with θ'_i; then a TRPO step on θ for the post-update surrogate, with the KL trust region
and its Hessian (for conjugate gradient) both taken *through* the inner update.

The task axis is handled by stacking per-task parameters ``[T, ...]`` and either ``vectorized_map``
or an unrolled loop (``vectorize``; see ``benchmarks/bench_rl.py``). Because the inner loss is a sum
of per-task losses of the stacked copies, one gradient gives every task its own inner step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, ClassVar, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_maml import training
from tf_maml.inner_loop import adapt
from tf_maml.rl.advantages import task_advantages
from tf_maml.rl.envs import env_family
from tf_maml.rl.policy import build_policy, distribution, kl_divergence, log_prob, policy_params
from tf_maml.rl.sampler import BUDGETS, Sampler, TrajectoryBatch, wave_layout
from tf_maml.rl.trpo import backtracking_line_search, flatten, gauss_newton_vector_product, natural_gradient, unflatten
from tf_maml.serving import read_metadata, resolve_version_dir
from tf_maml.settings import BOOLEAN, Rule, check_settings, each, integer, number, one_of, optional
from tf_maml.training import check_resume_settings


class PGData(NamedTuple):
    """One batch as tensors with a task axis: obs ``[T, R, H, d]``, actions, advantages/mask ``[T, R, H]``
    (R rows of H steps; a row may hold several episodes, :func:`pack_rows`)."""

    obs: tf.Tensor
    actions: tf.Tensor
    advantages: tf.Tensor
    mask: tf.Tensor


def pack_rows(mask: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(mask, *arrays)`` with each task's episodes packed end to end into as few horizon-long rows as
    first-fit decreasing finds, ``[T, N, H, ...] → [T, R, H, ...]``.

    The update only ever sums over masked steps, so rows need not be episodes. A step budget gives tasks
    many short episodes, each padded to the horizon and to the largest count; packed, the update costs
    what the steps cost (late in 2D-navigation training, a fifth of the padded batch). Episodes must be
    prefixes of their rows, as the sampler writes them.
    """
    n_tasks, _, horizon = mask.shape
    if (np.diff(mask, axis=-1) > 0).any():
        raise ValueError("pack_rows takes rows that each hold one episode from their first step (a mask of 1s, "
                         "then 0s); a row with a gap would lose steps. Sampler.sample's batches are laid out so.")
    lengths = mask.sum(axis=-1).astype(np.int64)
    row = np.zeros(lengths.shape, np.int64)
    offset = np.zeros(lengths.shape, np.int64)
    n_rows = 1
    for i in range(n_tasks):
        free: list[int] = []  # room left in each row of task i
        for j in sorted(np.flatnonzero(lengths[i]), key=lambda j: -lengths[i, j]):  # stable: ties keep order
            n = lengths[i, j]
            r = next((r for r, room in enumerate(free) if room >= n), len(free))
            if r == len(free):
                free.append(horizon)
            row[i, j], offset[i, j] = r, horizon - free[r]
            free[r] -= n
        n_rows = max(n_rows, len(free))
    t, j, h = np.nonzero(mask)
    dest = (t, row[t, j], offset[t, j] + h)
    out = []
    for x in (mask, *arrays):
        packed = np.zeros((n_tasks, n_rows, horizon, *x.shape[3:]), x.dtype)
        packed[dest] = x[t, j, h]
        out.append(packed)
    return tuple(out)


def to_pg_data(batch: TrajectoryBatch, gamma: float, lam: float, dtype=tf.float32, pack: bool = True) -> PGData:
    """Fit the per-task baselines on the episodes, then lay the batch out for the TensorFlow update
    (``pack``: several episodes per row, :func:`pack_rows`; the update is the same either way)."""
    adv = task_advantages(batch.obs, batch.rewards, batch.mask, gamma, lam)
    mask, obs, actions, adv = (pack_rows if pack else lambda *a: a)(batch.mask, batch.obs, batch.actions, adv)
    return PGData(*(tf.constant(x, dtype) for x in (obs, actions, adv, mask)))


def per_task(fn: Callable, stacked_params: Sequence[tf.Tensor], data: Sequence[tf.Tensor], vectorize: bool) -> tf.Tensor:
    """``[fn(params_i, *data_i) for i in tasks]`` stacked, vectorised (pfor) or as an unrolled loop."""
    if vectorize:
        return tf.vectorized_map(lambda a: fn(list(a[0]), *a[1]), (list(stacked_params), tuple(data)))
    n = int(data[0].shape[0])
    return tf.stack([fn([p[i] for p in stacked_params], *[d[i] for d in data]) for i in range(n)])


def pg_loss(model: keras.Model, params: Sequence[tf.Tensor], obs, actions, advantages, mask) -> tf.Tensor:
    """Vanilla policy-gradient surrogate ``−mean_t log π(a_t|s_t) A_t`` over one task's valid steps."""
    mean, log_std = distribution(model, params, obs)
    logp = log_prob(mean, log_std, actions)
    return -tf.reduce_sum(logp * advantages * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def inner_update(
    model: keras.Model,
    stacked_params: Sequence[tf.Tensor],
    data: PGData,
    fast_lr: float | tf.Tensor,
    steps: int,
    first_order: bool,
    vectorize: bool,
) -> list[tf.Tensor]:
    """``steps`` differentiable policy-gradient steps, one independent adaptation per task."""

    def loss_fn(params):
        return tf.reduce_sum(per_task(lambda p, *d: pg_loss(model, p, *d), params, data, vectorize))

    rates = [tf.cast(fast_lr, p.dtype) for p in stacked_params]
    return adapt(stacked_params, loss_fn, rates, steps, first_order)


def tile_params(params: Sequence[tf.Tensor], n: int) -> list[tf.Tensor]:
    return [tf.repeat(tf.convert_to_tensor(p)[None], n, axis=0) for p in params]


@dataclasses.dataclass
class MAMLTRPOConfig:
    env_id: str = "tf_maml/Navigation2D-v0"
    meta_batch_size: int = 20
    n_traj: int = 20
    # "episodes": n_traj whole episodes per task; "steps": n_traj × horizon steps of them, an rllab-style
    # step budget (Sampler.sample), which favours episodes that end early
    sample_budget: str = "episodes"
    fast_lr: float = 0.1
    # 0 = plain TRPO on the task mixture (the "pretrained" baseline); each step samples its own trajectories.
    inner_steps: int = 1
    first_order: bool = False
    gamma: float = 0.99
    gae_lambda: float = 1.0
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_steps: int = 15
    ls_ratio: float = 0.8
    hidden: tuple[int, ...] = (100, 100)
    num_envs: int = 400
    asynchronous: bool | None = None
    vectorize: bool = True
    seed: int = 0
    # The policy's action units: "unit" = [−1, 1] rescaled to the env's bounds (make_policy_env). Runs
    # written before this existed acted in the env's own units and cannot be resumed as they were.
    action_scaling: str = "unit"

    RUN_KIND: ClassVar[str] = "a MAML-TRPO run (scripts/train_rl.py)"
    RULES: ClassVar[dict[str, Rule]] = {
        "env_id": Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty environment id"),
        "meta_batch_size": integer(1), "n_traj": integer(1), "sample_budget": one_of(*BUDGETS),
        "fast_lr": number(0, low_open=True),
        "inner_steps": integer(0), "first_order": BOOLEAN, "gamma": number(0, 1), "gae_lambda": number(0, 1),
        "max_kl": number(0, low_open=True), "cg_iters": integer(1), "cg_damping": number(0), "ls_steps": integer(1),
        "ls_ratio": number(0, 1, low_open=True, high_open=True), "hidden": each(integer(1)), "num_envs": integer(1),
        "asynchronous": optional(BOOLEAN), "vectorize": BOOLEAN, "seed": integer(0), "action_scaling": one_of("unit"),
    }

    def __post_init__(self) -> None:
        check_settings(self, self.RULES)
        self.hidden = tuple(self.hidden)  # a list after a JSON round trip

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "the config") -> "MAMLTRPOConfig":
        """The settings saved as ``text`` (read from ``source``, named in errors): another kind of run's, or
        values that today's checks refuse, are refused (:func:`tf_maml.training.config_from_dict`)."""
        d = json.loads(text)
        config = training.config_from_dict(cls, d, source)
        if d.get("action_scaling") != "unit":
            raise ValueError(
                "This run's policy acted in the env's own action units (it was trained before tf_maml rescaled "
                "policy actions from [-1, 1], as rllab's normalize does); resuming or evaluating it now would "
                "scale its actions. Retrain it with this version of scripts/train_rl.py."
            )
        return config


INIT_FILE = "initialised_from.json"
# Settings that change how fast episodes are sampled, not which (Sampler keys its seeds and noise by episode
# slot; the policy's batched float32 arithmetic differs by round-off, which MuJoCo's contacts grow into other
# draws of the same distribution): a resumed run may change them, unless a step budget, which each wave keeps
# for its envs, would be split into other shares of a task's episodes (MAMLTRPO.for_run).
SPEED_SETTINGS = ("asynchronous", "num_envs")


def exported_run_config(export: str) -> MAMLTRPOConfig:
    """The settings of the run a meta-policy export came from (``--init-from``)."""
    meta = read_metadata(export)
    if meta.get("kind") != "meta-policy" or "config" not in meta:
        raise ValueError(f"{export} is not a meta-policy export carrying its run's settings (an adapted policy, or "
                         "exported before exports carried them): export the run's meta-policy with "
                         "`python -m tf_maml.rl.export --logdir RUN --steps 0 --name NAME` and continue that.")
    return MAMLTRPOConfig.from_json(json.dumps(meta["config"]), source=f"the metadata of {export}")


def _recorded_export(logdir: str) -> str | None:
    path = os.path.join(logdir, INIT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["export"]


def _seed(*parts: int) -> int:
    """Deterministic per-iteration seed (so a resumed run samples exactly what the original would)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


class MAMLTRPO:
    """The meta-learner: owns the policy, sampler, checkpoints and TensorBoard writer."""

    def __init__(self, config: MAMLTRPOConfig, logdir: str | None = None, progress: bool = False) -> None:
        self.config = config
        self.logdir = logdir
        probe = Sampler(config.env_id, keras.Sequential(), num_envs=1, asynchronous=False)
        self.model = build_policy(probe.obs_dim, probe.act_dim, config.hidden, seed=config.seed)
        probe.close()
        self.sampler = Sampler(config.env_id, self.model, config.num_envs, config.asynchronous, progress)
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
        self.checkpoint = tf.train.Checkpoint(policy=self.model, iteration=self.iteration)
        self.manager = None
        self.writer = None
        if logdir is not None:
            os.makedirs(logdir, exist_ok=True)
            config_path = os.path.join(logdir, "config.json")
            if not os.path.exists(config_path):
                with open(config_path, "w") as f:
                    f.write(config.to_json())
            self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(logdir, "checkpoints"), max_to_keep=3)
            if self.manager.latest_checkpoint:
                self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.writer = tf.summary.create_file_writer(os.path.join(logdir, "tensorboard"))
        self._like = policy_params(self.model)
        # One graph per function whatever the batch's episode count (it varies with a step budget): a resumed
        # run then computes its updates with the very graph the interrupted one used, so resumes are exact.
        stacked, theta, data, dist = self._signatures()
        pre = (data,) * config.inner_steps
        self._one_more_step_fn = tf.function(self._one_more_step, input_signature=[stacked, data])
        self._loss_kl_fn = tf.function(self._loss_kl, input_signature=[theta, pre, data, dist, dist])
        self._loss_grad_fn = tf.function(self._loss_grad, input_signature=[theta, pre, data])
        self._fisher_vector_product_fn = tf.function(
            self._fisher_vector_product, input_signature=[theta, pre, data, dist, dist, theta]
        )

    def _signatures(self):
        """Specs of per-task parameters, θ, a batch (:class:`PGData`) and a distribution parameter, for
        ``meta_batch_size`` tasks and any number of episodes per task."""
        t, h = self.config.meta_batch_size, self.sampler.horizon
        dtype = self._like[0].dtype
        stacked = [tf.TensorSpec([t, *p.shape], dtype) for p in self._like]
        theta = tf.TensorSpec([sum(int(np.prod(p.shape)) for p in self._like)], dtype)
        data = PGData(
            obs=tf.TensorSpec([t, None, h, self.sampler.obs_dim], dtype),
            actions=tf.TensorSpec([t, None, h, self.sampler.act_dim], dtype),
            advantages=tf.TensorSpec([t, None, h], dtype),
            mask=tf.TensorSpec([t, None, h], dtype),
        )
        return stacked, theta, data, tf.TensorSpec([t, None, h, self.sampler.act_dim], dtype)

    @classmethod
    def for_run(cls, config: MAMLTRPOConfig, logdir: str, asked: dict, progress: bool = False,
                init_from: str | None = None) -> "MAMLTRPO":
        """A new run of ``config`` in ``logdir``, or the run already there with its own settings, which must
        agree with the ``asked`` ones (ValueError saying which differ, before anything is touched); an env id
        of the run's family but another version counts as agreeing, the run keeping its own. The vector envs
        (:data:`SPEED_SETTINGS`: their kind and number) change speed, not what is sampled (up to float32
        round-off, see there), so a resume may ask for others (else it keeps the run's own). ``init_from``, a
        meta-policy export, starts a new ``logdir`` as the continuation of the run it was exported from
        (:meth:`start_from_export`); rerun, the same call resumes that run."""
        config_path = os.path.join(logdir, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                saved = MAMLTRPOConfig.from_json(f.read(), source=config_path)
            where = logdir
            if init_from is not None:
                training.check_continues(logdir, init_from, _recorded_export(logdir))
        elif init_from is not None:
            saved, where = exported_run_config(init_from), f"{init_from} (the export --init-from continues)"
        else:
            return cls(config, logdir, progress=progress)
        settings = {k: v for k, v in asked.items() if k not in SPEED_SETTINGS}
        if "env_id" in settings and env_family(settings["env_id"]) == env_family(saved.env_id):
            del settings["env_id"]  # a run keeps the env version it was made with (presets move to newer ones)
        check_resume_settings(saved, settings, where)
        config = dataclasses.replace(saved, **{k: asked[k] for k in SPEED_SETTINGS if k in asked})
        share = {n: wave_layout(config.meta_batch_size, config.n_traj, n)[1] for n in (saved.num_envs, config.num_envs)}
        if config.sample_budget == "steps" and share[saved.num_envs] != share[config.num_envs]:
            raise ValueError(
                f"{where} samples with a step budget, which each wave keeps for its envs: num_envs "
                f"{saved.num_envs} → {config.num_envs} would run {share[config.num_envs]} instead of "
                f"{share[saved.num_envs]} of a task's {config.n_traj} episodes per wave, and so change what a "
                f"batch holds. Keep --num-envs {saved.num_envs}"
                + (f", or pick one of at least {config.n_traj}." if share[saved.num_envs] == config.n_traj else ".")
            )
        if init_from is None or tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")):
            return cls(config, logdir, progress=progress)
        version_dir = os.path.realpath(resolve_version_dir(init_from))
        policy = [np.asarray(v) for v in tf.saved_model.load(version_dir).params]  # loaded before anything is written
        os.makedirs(logdir, exist_ok=True)
        with open(os.path.join(logdir, INIT_FILE), "w") as f:  # first: a rerun after a crash starts again
            json.dump({"export": version_dir, "iteration": int(read_metadata(version_dir)["iteration"])}, f, indent=2)
        learner = cls(config, logdir, progress=progress)
        learner.start_from_export(version_dir, policy)
        return learner

    def start_from_export(self, export: str, policy: Sequence[np.ndarray] | None = None) -> int:
        """Take the policy (``policy``, else the export's) and iteration of a meta-policy export as this run's
        first checkpoint; return the iteration. Run directories stay on their machine, exports travel:
        meta-batches are seeded by the iteration, so the run goes on with the batches the exported run would
        have sampled next."""
        version_dir = resolve_version_dir(export)
        iteration = int(read_metadata(version_dir)["iteration"])
        if policy is None:
            policy = [np.asarray(v) for v in tf.saved_model.load(version_dir).params]
        ours = self.model.trainable_variables  # what policy_params reads, in the export's order
        if [p.shape for p in policy] != [tuple(v.shape) for v in ours]:
            raise ValueError(f"{export} holds a policy of other shapes than this run's {self.config.env_id} policy "
                             f"with hidden layers {self.config.hidden}.")
        for variable, value in zip(ours, policy):
            variable.assign(value)
        self.iteration.assign(iteration)
        self.save()
        return iteration

    @classmethod
    def from_logdir(cls, logdir: str, **overrides) -> "MAMLTRPO":
        """Rebuild from ``logdir/config.json`` and restore the latest checkpoint (there must be one: evaluating
        or exporting a run that never finished an iteration would silently use the random initialisation)."""
        config_path = os.path.join(logdir, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{config_path} not found: {logdir} is not a train_rl.py run directory.")
        with open(config_path) as f:  # first: training it further would not help a config that is refused
            config = MAMLTRPOConfig.from_json(f.read(), source=config_path)
        if tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")) is None:
            raise FileNotFoundError(
                f"{logdir} has no checkpoint: its run stopped before finishing a meta-iteration. Train it first "
                f"(python scripts/train_rl.py ... --logdir {logdir}); nothing was evaluated or exported."
            )
        return cls(dataclasses.replace(config, **overrides), logdir)

    @classmethod
    def from_export(cls, export: str, **overrides) -> "MAMLTRPO":
        """The meta-learner of a meta-policy export (``<base>/<name>`` or a version), in memory: its run's
        settings, policy and iteration, for evaluating a shipped meta-policy where its run directory is not."""
        learner = cls(dataclasses.replace(exported_run_config(export), **overrides))
        try:
            learner.start_from_export(export)
        except Exception:
            learner.close()
            raise
        return learner

    # ---- differentiable pieces (flat θ in, so CG and the line search can work on vectors) ----

    def _adapted(self, theta: tf.Tensor, pre: Sequence[PGData]) -> list[tf.Tensor]:
        """θ adapted per task by one policy-gradient step on each batch of ``pre`` in turn (none: θ)."""
        c = self.config
        params = tile_params(unflatten(theta, self._like), c.meta_batch_size)
        for data in pre:
            params = inner_update(self.model, params, data, c.fast_lr, 1, c.first_order, c.vectorize)
        return params

    def _one_more_step(self, stacked_params: Sequence[tf.Tensor], data: PGData) -> list[tf.Tensor]:
        """One more inner step from per-task parameters, for sampling only (no meta-gradient needed), so
        sampling k inner steps costs k steps rather than the 1 + 2 + … + k of re-adapting from θ each time."""
        c = self.config
        return inner_update(self.model, stacked_params, data, c.fast_lr, 1, True, c.vectorize)

    def _post_dist(self, adapted: Sequence[tf.Tensor], obs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = per_task(lambda p, o: tf.concat(distribution(self.model, p, o), -1), adapted, (obs,), self.config.vectorize)
        return tf.split(out, 2, axis=-1)

    def _adapted_dist(self, theta: tf.Tensor, pre: Sequence[PGData], post: PGData) -> tuple[tf.Tensor, tf.Tensor]:
        """The policies adapted from ``theta`` on ``pre``: their distributions on the post-update states."""
        return self._post_dist(self._adapted(theta, pre), post.obs)

    def _loss_kl(self, theta, pre: Sequence[PGData], post: PGData, old_mean, old_log_std) -> tuple[tf.Tensor, tf.Tensor]:
        """Surrogate and KL at ``theta`` against fixed old distributions (the line search's candidates)."""
        mean, log_std = self._adapted_dist(theta, pre, post)
        return self._surrogate_kl(mean, log_std, post, old_mean, old_log_std)

    @staticmethod
    def _surrogate_kl(mean, log_std, post: PGData, old_mean, old_log_std) -> tuple[tf.Tensor, tf.Tensor]:
        """TRPO surrogate ``−E[π_θ'(a|s)/π_old(a|s) · A]`` (per task, averaged over tasks) and the mean
        KL(π_old ‖ π_θ') over every post-update step of every task, as in the reference code (the two
        differ from a per-task KL only where episodes end early)."""
        ratio = tf.exp(log_prob(mean, log_std, post.actions) - log_prob(old_mean, old_log_std, post.actions))
        steps = tf.maximum(tf.reduce_sum(post.mask, axis=[1, 2]), 1.0)
        surrogate = -tf.reduce_sum(ratio * post.advantages * post.mask, axis=[1, 2]) / steps
        kl = kl_divergence(old_mean, old_log_std, mean, log_std) * post.mask
        return tf.reduce_mean(surrogate), tf.reduce_sum(kl) / tf.maximum(tf.reduce_sum(post.mask), 1.0)

    def _loss_grad(self, theta, pre, post):
        """The sampling policy's post-update distributions, the surrogate and its meta-gradient at θ.

        At θ the sampling policy is the adapted policy itself, so the recorded forward pass also gives the
        "old" distributions (held constant): no separate forward pass, inner update included, for them.
        """
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(theta)
            mean, log_std = self._adapted_dist(theta, pre, post)
            old_mean, old_log_std = tf.stop_gradient(mean), tf.stop_gradient(log_std)
            loss, _ = self._surrogate_kl(mean, log_std, post, old_mean, old_log_std)
        grad = tape.gradient(loss, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return old_mean, old_log_std, loss, grad

    def _fisher_vector_product(self, theta, pre, post, old_mean, old_log_std, vector):
        """The KL's Hessian at θ (through the inner update) times ``vector``, in its Gauss-Newton form
        (:func:`tf_maml.rl.trpo.gauss_newton_vector_product`; exact at θ, where the old policy is θ's)."""

        def kl(dist: Sequence[tf.Tensor]) -> tf.Tensor:
            return self._surrogate_kl(*dist, post, old_mean, old_log_std)[1]

        return gauss_newton_vector_product(lambda t: self._adapted_dist(t, pre, post), kl, theta, vector)

    def natural_gradient(self, theta, pre, post):
        """TRPO's direction for the post-update surrogate, with the KL's Hessian through the inner update.

        The conjugate gradient runs in Python over one traced Fisher-vector product. The scheme it replaced
        (double back-propagation of one recorded pass, ten products traced into one graph with the conjugate
        gradient) made the first update 4–7 s longer and ran no faster (BENCHMARKS.md). Returns
        ``(old_mean, old_log_std, loss, grad, direction, curvature)``.
        """
        c = self.config
        old_mean, old_log_std, loss, grad = self._loss_grad_fn(theta, pre, post)

        def fisher_vector_product(v):
            return self._fisher_vector_product_fn(theta, pre, post, old_mean, old_log_std, v)

        direction, curvature = natural_gradient(grad, fisher_vector_product, c.cg_iters, c.cg_damping)
        return old_mean, old_log_std, loss, grad, direction, curvature

    # ---- one meta-iteration ----

    def theta(self) -> tf.Tensor:
        return flatten(policy_params(self.model))

    def set_theta(self, theta: tf.Tensor) -> None:
        for var, value in zip(self.model.trainable_variables, unflatten(theta, self._like)):
            var.assign(value)

    def sample_meta_batch(self, iteration: int):
        """Tasks, the data of each inner step, and the post-update batch of one iteration (seeded by it).

        As in the reference code, each inner step gets trajectories of its own, sampled with the policy that
        step starts from; the first batch (θ's) is also returned for the pre-update return.
        """
        c = self.config
        tasks = self.sampler.sample_tasks(c.meta_batch_size, _seed(c.seed, iteration, 0))
        pre: list[PGData] = []
        pre_batch = None
        params, adapted_per_task = policy_params(self.model), False
        for k in range(c.inner_steps):
            batch = self.sampler.sample(params, tasks, c.n_traj, _seed(c.seed, iteration, 1 if k == 0 else 2 + k),
                                        per_task_params=adapted_per_task, budget=c.sample_budget)
            which = "pre-update" if k == 0 else f"step-{k + 1}"
            self._check_finite(iteration + 1, {f"{which} rewards": batch.rewards})
            pre.append(to_pg_data(batch, c.gamma, c.gae_lambda))
            pre_batch = batch if pre_batch is None else pre_batch
            start = params if adapted_per_task else tile_params(params, c.meta_batch_size)
            params, adapted_per_task = self._one_more_step_fn(start, pre[-1]), True
            self._check_finite(iteration + 1, {"adapted parameters": flatten(params).numpy()})
        post_batch = self.sampler.sample(params, tasks, c.n_traj, _seed(c.seed, iteration, 2),
                                         per_task_params=adapted_per_task, budget=c.sample_budget)
        self._check_finite(iteration + 1, {"post-update rewards": post_batch.rewards})
        post = to_pg_data(post_batch, c.gamma, c.gae_lambda)
        return tasks, (post_batch if pre_batch is None else pre_batch), tuple(pre), post_batch, post

    def step(self, log: bool = True) -> dict:
        """One meta-iteration: updates the policy and the iteration counter; logs the metrics (TensorBoard,
        ``metrics.jsonl``) unless ``log=False`` (``train`` logs them once the checkpoint is saved)."""
        it = int(self.iteration.numpy())
        t0 = time.time()
        tasks, pre_batch, pre, post_batch, post = self.sample_meta_batch(it)
        t_sample = time.time() - t0
        update = self.meta_update(pre, post, it + 1)
        self.iteration.assign_add(1)
        metrics = {
            "iteration": it + 1,
            "return_pre": pre_batch.mean_return(),
            "return_post": post_batch.mean_return(),
            **update,
            "seconds_sampling": t_sample,
            "seconds": time.time() - t0,
        }
        if log:
            self._log(metrics)
        return metrics

    def meta_update(self, pre: Sequence[PGData], post: PGData, iteration: int | None = None) -> dict:
        """The TRPO step on θ for sampled data: natural gradient through the inner update by conjugate
        gradient, then the line search; sets the policy's weights and returns the step's figures."""
        c = self.config
        it = int(self.iteration.numpy()) + 1 if iteration is None else iteration
        theta = self.theta()
        old_mean, old_log_std, loss, grad, direction, curvature = self.natural_gradient(theta, pre, post)
        self._check_finite(it, {"surrogate loss": loss.numpy(), "meta-gradient": grad.numpy(),
                                "natural-gradient direction": direction.numpy()})
        full_step = direction / np.sqrt(max(0.5 * float(curvature), 1e-12) / c.max_kl)

        def loss_and_kl(candidate):
            l, k = self._loss_kl_fn(candidate, pre, post, old_mean, old_log_std)
            return float(l), float(k)

        new_theta, ls = backtracking_line_search(
            loss_and_kl, theta, full_step, float(loss), c.max_kl, c.ls_steps, c.ls_ratio
        )
        self.set_theta(new_theta)
        return {
            "surrogate_before": float(loss),
            "surrogate_after": ls.loss,
            "kl": ls.kl,
            "line_search_accepted": float(ls.accepted),
            "line_search_fraction": ls.step_fraction,
            "line_search_steps": float(ls.steps_tried),
            "grad_norm": float(tf.norm(grad)),
        }

    def _check_finite(self, iteration: int, values: dict[str, np.ndarray]) -> None:
        """Stop before a non-finite value can reach the baseline fit, the policy or a checkpoint."""
        bad = [name for name, value in values.items() if not np.all(np.isfinite(value))]
        if bad:
            saved = self.manager.latest_checkpoint if self.manager else None
            raise FloatingPointError(
                f"Meta-iteration {iteration}: {', '.join(bad)} not finite. The policy was not updated"
                + (f" and the last checkpoint ({saved}) is intact" if saved else "")
                + ". Check the env's rewards for NaN/inf; if the inner step diverges, start a new run (another "
                "logdir) with a lower fast_lr (resuming repeats the same samples)."
            )

    def _log(self, metrics: dict) -> None:
        if self.writer is not None:
            with self.writer.as_default(step=metrics["iteration"]):
                for k, v in metrics.items():
                    if k != "iteration":
                        tf.summary.scalar(k, v)
            self.writer.flush()
        if self.logdir is not None:
            with open(os.path.join(self.logdir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")

    def save(self) -> str | None:
        return self.manager.save(checkpoint_number=int(self.iteration.numpy())) if self.manager else None

    def train(self, iterations: int, checkpoint_every: int = 1, on_iteration: Callable[[dict], None] | None = None):
        """Run until ``iteration == iterations`` (so a resumed run continues, never repeats)."""
        history = []
        while int(self.iteration.numpy()) < iterations:
            metrics = self.step(log=False)
            history.append(metrics)
            if metrics["iteration"] % checkpoint_every == 0 or metrics["iteration"] == iterations:
                self.save()
            # Logged once saved: an iteration a crash loses is redone on resume and logged once, not twice.
            self._log(metrics)
            if on_iteration is not None:
                on_iteration(metrics)
        return history

    def close(self) -> None:
        self.sampler.close()
