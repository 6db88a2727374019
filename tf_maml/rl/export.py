"""Export a (task-adapted) policy as a TF Serving SavedModel: ``<base>/<name>/<version>/``.

Versions are integers and never overwritten: the next free number is used, the model is written to
a hidden temp dir next to it and renamed into place, so a failure leaves no half-written version
(TF Serving ignores non-integer directories). Signatures: ``serving_default``
(``observations → actions``, the mean action) and ``sample`` (a Gaussian sample), in the env's own
units: the policy acts in [−1, 1] (:func:`tf_maml.rl.envs.make_policy_env`) and the exported function
rescales and clips to the action bounds, as the training env did. A JSON metadata
file (task, adaptation settings, dims) is stored as a SavedModel asset: ``assets/tf_maml.json``, as for
every export. Versioning is :func:`tf_maml.serving.write_version`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_maml.rl.envs.base import Task
from tf_maml.rl.policy import distribution
from tf_maml.serving import METADATA_ASSET, provenance, write_version


class PolicyModule(tf.Module):
    """Frozen policy weights plus the serving functions; the Keras model is only traced, not saved."""

    def __init__(self, model: keras.Model, params: Sequence[tf.Tensor], metadata_path: str,
                 action_bounds: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__(name="policy")
        self.params = [tf.Variable(p, trainable=False, name=f"param_{i}") for i, p in enumerate(params)]
        self.metadata = tf.saved_model.Asset(metadata_path)
        obs_dim = int(model.input_shape[-1])
        spec = tf.TensorSpec([None, obs_dim], tf.float32, name="observations")

        def to_env(actions):
            if action_bounds is None:
                return actions
            low, high = (tf.constant(b, actions.dtype) for b in action_bounds)
            return tf.clip_by_value(low + (actions + 1.0) * 0.5 * (high - low), low, high)

        def mean_action(observations):
            mean, _ = distribution(model, [v.read_value() for v in self.params], observations)
            return {"actions": to_env(mean)}

        def sampled_action(observations):
            mean, log_std = distribution(model, [v.read_value() for v in self.params], observations)
            return {"actions": to_env(mean + tf.exp(log_std) * tf.random.normal(tf.shape(mean), dtype=mean.dtype))}

        self.serve = tf.function(mean_action, input_signature=[spec])
        self.sample = tf.function(sampled_action, input_signature=[spec])


def export_policy(
    model: keras.Model,
    params: Sequence[tf.Tensor],
    base_dir: str,
    name: str,
    metadata: dict[str, Any] | None = None,
    *,
    action_bounds: tuple[Sequence[float], Sequence[float]] | None,
) -> str:
    """Save ``params`` (aligned with ``model.trainable_variables``) as the next version; returns its path.

    ``action_bounds`` ``(low, high)``: the env's (``Sampler.action_low/high``); served actions are mapped
    from the policy's [−1, 1] into them. Required, so no caller serves policy units by accident;
    ``None`` serves the policy's own units.
    """
    meta = {
        "format": "tf_maml.rl.export/1",
        **provenance(),
        "kind": "policy",
        "observation_dim": int(model.input_shape[-1]),
        "action_dim": int(model.output_shape[-1]) // 2,
        "input_shape": [int(model.input_shape[-1])],
        "output_shape": [int(model.output_shape[-1]) // 2],
        "signatures": {"serving_default": "mean action", "sample": "sampled action"},
        "action_bounds": None if action_bounds is None else [[float(x) for x in b] for b in action_bounds],
        **(metadata or {}),
    }

    def write(tmp: str) -> None:
        meta_dir = tempfile.mkdtemp(prefix="tf_maml_meta_")
        try:
            meta_path = os.path.join(meta_dir, METADATA_ASSET)
            with open(meta_path, "w") as f:
                json.dump(meta, f, indent=2)
            module = PolicyModule(model, params, meta_path, action_bounds)
            tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve, "sample": module.sample})
        finally:
            shutil.rmtree(meta_dir, ignore_errors=True)

    return write_version(base_dir, name, write)


def export_adapted_policy(
    model: keras.Model,
    meta_params: Sequence[tf.Tensor],
    sampler,
    task: Task,
    base_dir: str,
    name: str,
    fast_lr: float,
    steps: int = 1,
    n_traj: int = 20,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    later_lr: float | None = None,
) -> tuple[str, list[tf.Tensor]]:
    """Adapt the meta-policy to ``task`` (``steps`` policy-gradient steps on sampled episodes) and export it.

    The first step uses ``fast_lr``, later ones ``later_lr`` (default ``fast_lr``), as in evaluation.

    Returns the version path and the adapted parameters (so callers can check the served actions).
    """
    from tf_maml.rl.evaluation import adaptation_returns

    returns, stacked = adaptation_returns(
        model, meta_params, sampler, [task], n_traj, fast_lr, steps=steps, seed=seed, return_params=True,
        later_lr=later_lr,
    )
    params = [p[0] for p in stacked]
    if not all(np.all(np.isfinite(p.numpy())) for p in params):
        raise FloatingPointError(f"Adapting to {task} gave non-finite policy parameters (returns by step: "
                                 f"{[float(r[0]) for r in returns]}); nothing was exported. Lower fast_lr, or check the "
                                 "env's rewards for this task.")
    # adaptation_returns also samples with the final policy; its return is recorded as metadata.
    meta = {
        "task": task,
        "env_id": sampler.env_id,
        "adaptation": {"steps": steps, "fast_lr": fast_lr, "later_lr": later_lr if later_lr is not None else fast_lr,
                       "n_traj": n_traj, "seed": seed},
        "returns_by_step": [float(r[0]) for r in returns],
        **(metadata or {}),
    }
    bounds = (sampler.action_low, sampler.action_high)
    return export_policy(model, params, base_dir, name, meta, action_bounds=bounds), params


def main(argv: list[str] | None = None) -> None:
    """``python -m tf_maml.rl.export --logdir RUN --base saved_models --name NAME [--task JSON | --task-seed S]``:
    export the meta-policy (``--steps 0``) or a policy adapted to one task (given, or sampled from a seed)."""
    import argparse

    from tf_maml.settings import flag_type, integer, number

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--logdir", required=True)
    p.add_argument("--base", default="saved_models")
    p.add_argument("--name", required=True)
    p.add_argument("--steps", type=flag_type(integer(0)), default=1,
                   help="adaptation steps; 0 exports the meta-policy itself")
    p.add_argument("--task", help='the task to adapt to, as JSON, e.g. \'{"velocity": 1.5}\' or \'{"goal": [0.3, -0.2]}\'')
    p.add_argument("--task-seed", type=int, default=4321, help="without --task: sample the task from this seed; "
                                                               "also seeds the adaptation's trajectories")
    p.add_argument("--n-traj", type=flag_type(integer(1)), default=40, help="episodes per adaptation step")
    p.add_argument("--later-lr", type=flag_type(number(0, low_open=True), float), help="rate of steps 2.. (default: half the run's fast_lr, as eval_rl.py)")
    args = p.parse_args(argv)

    if args.task is not None and args.steps == 0:
        p.error("--task needs --steps 1 or more (--steps 0 exports the meta-policy, which has no task).")

    from tf_maml.rl.envs import parse_task
    from tf_maml.rl.maml_trpo import MAMLTRPO
    from tf_maml.rl.policy import policy_params

    try:
        learner = MAMLTRPO.from_logdir(args.logdir)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    c = learner.config
    try:
        task = parse_task(c.env_id, args.task) if args.task is not None else None
    except ValueError as err:
        learner.close()
        p.error(str(err))
    if args.steps == 0:
        meta = {"env_id": c.env_id, "kind": "meta-policy", "iteration": int(learner.iteration.numpy()),
                "fast_lr": c.fast_lr, "inner_steps": c.inner_steps, "config": json.loads(c.to_json())}
        path = export_policy(learner.model, policy_params(learner.model), args.base, args.name, meta,
                             action_bounds=(learner.sampler.action_low, learner.sampler.action_high))
    else:
        task = task if task is not None else learner.sampler.sample_tasks(1, args.task_seed)[0]
        path, _ = export_adapted_policy(learner.model, policy_params(learner.model), learner.sampler, task,
                                        args.base, args.name, c.fast_lr, args.steps, args.n_traj, seed=args.task_seed,
                                        metadata={"meta_iteration": int(learner.iteration.numpy())},
                                        later_lr=args.later_lr if args.later_lr is not None else c.fast_lr / 2)
    learner.close()
    print(path)


if __name__ == "__main__":
    main()
