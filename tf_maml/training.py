"""Resumable meta-training: checkpoints every epoch, and the data stream restarts at the saved step.

Episode datasets here are indexed by step (``make_dataset(start_step)``), so resuming at step s replays
exactly the batches an uninterrupted run would have seen: resume is exact, not approximate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Sequence, TypeVar

import keras
import tensorflow as tf

from tf_maml.maml import MAML
from tf_maml.settings import InvalidSettings, check_value, epochs_problem, execution_problem, integer

Config = TypeVar("Config")
CONFIG_FILE = "config.json"
EMPTY_BUDGET = {"meta_steps": 0, "wall_seconds": 0.0, "sessions": 0}


def check_resume_settings(saved: object, asked: dict, where: str, flag_hint: str = "setting flags") -> None:
    """Refuse to resume the run in ``where`` (settings ``saved``) with other ``asked`` settings.

    A resumed run must be the run it was: silently switching a setting would mix two experiments in one
    checkpoint and one budget.
    """
    differ = {k: (v, getattr(saved, k)) for k, v in asked.items() if getattr(saved, k) != v}
    if differ:
        listed = ", ".join(f"{k}: asked {a!r}, run has {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{where} holds a run with other settings ({listed}). Resume it with its own settings "
                         f"(or no {flag_hint}), or start a new run in another directory.")


def save_config(config, workdir: str) -> None:
    """Record a run's settings (a dataclass) beside its checkpoints, so resuming can recover them.

    They are validated again first (a field may have been assigned since the config was made): a bad
    value written here would lock the directory, every rerun being refused as "other settings"."""
    values = dataclasses.asdict(config)
    type(config)(**values)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        json.dump(values, f, indent=2)


def _run_kind(config_type: type) -> str:
    return getattr(config_type, "RUN_KIND", f"a {config_type.__name__} run")


def config_from_dict(config_type: type[Config], values: Any, source: str) -> Config:
    """Settings read back from ``source`` (a run's config.json, a model's metadata). Settings of another kind
    of run, or values that today's checks refuse (older versions saved them unchecked), are refused with a
    message naming ``source`` and the kind of run expected (``config_type.RUN_KIND``)."""
    kind = _run_kind(config_type)
    if not isinstance(values, dict):
        raise ValueError(f"{source} holds no settings, so it is not {kind}: pass the path of one instead.")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(config_type)})
    if unknown:
        raise ValueError(f"{source} holds the settings of another kind of run or model, not of {kind}: it has "
                         f"{unknown}, which {config_type.__name__} lacks. Pass the path of {kind} instead.")
    try:
        return config_type(**values)
    except InvalidSettings as err:
        raise ValueError(
            f"{source} holds settings this version refuses: {'; '.join(err.problems)}. They were saved unchecked "
            "(by an older version, or edited by hand) and resuming keeps a run's settings, so start a new run in "
            "another directory, or correct the file if you know the intended values."
        ) from None


def load_config(config_type: type[Config], workdir: str) -> Config:
    """The settings saved in ``workdir`` (see :func:`config_from_dict` for what is refused)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not the directory of {_run_kind(config_type)}. "
                                "Check the path, or train there first.")
    with open(path) as f:
        return config_from_dict(config_type, json.load(f), path)


def config_for_run(config: Config, overrides: dict, workdir: str, identity: Sequence[str] = (),
                   init_from: str | None = None, schedules: dict[str, str] | None = None,
                   restart: bool = False, retarget: Sequence[str] = (), peaks: Sequence[str] = ()) -> Config:
    """The settings to train ``workdir`` with: ``config`` (a preset with ``overrides`` applied) for a new run;
    for an existing run its own saved settings, so rerunning the same command resumes it exactly; for a new run
    continuing an export (``init_from``, see :func:`start_from_export`), the settings of the run it was exported from.

    Only ``meta_steps`` may change on resume (to extend a run); an override, or a preset field named in
    ``identity``, that disagrees with the saved run is refused by :func:`check_resume_settings`. One exception:
    a continuation may switch on a schedule its export ran without (``schedules`` maps such a setting to the
    field recording its first meta-step, set here to the export's): it changes only the steps still to come.
    With ``restart`` it may also begin again a schedule its export already ran (a warm restart, as in SGDR).
    A continuation also takes from ``config`` the fields named in ``retarget``: settings of the tasks that the
    network does not depend on (Omniglot's shots), so a meta-learner goes on training for other tasks. A
    continuation that begins a schedule may begin it from another value of the settings named in ``peaks``
    (the meta learning rate): a fine-tune restarts lower than the run it continues.
    """
    from tf_maml.serving import read_metadata

    asked_schedules = [k for k in schedules or {} if overrides.get(k)]
    if restart and (init_from is None or not asked_schedules):
        flags = ", ".join("--" + k.replace("_", "-") for k in schedules or {}) or "none here"
        raise ValueError(f"A warm restart begins a schedule ({flags}) again at the step of the export a run "
                         "continues: give both the export (--init-from) and the schedule's length.")
    if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        if init_from is not None:
            recorded = read_budget(os.path.join(workdir, "budget.json")).get("initialised_from")
            check_continues(workdir, init_from, recorded)
        saved, where = load_config(type(config), workdir), workdir
        if restart and recorded and os.path.exists(recorded):
            start = read_metadata(recorded).get("meta_steps_trained")
            kept = [f"{k} from meta-step {getattr(saved, schedules[k])}" for k in asked_schedules
                    if getattr(saved, schedules[k]) != start]
            if kept:
                raise ValueError(f"{workdir} continues {recorded} with the schedule it had ({', '.join(kept)}), not "
                                 f"a warm restart at its meta-step {start}: drop --warm-restart to resume this run, "
                                 "or begin the restart in a new directory.")
    elif init_from is not None:
        where = f"{init_from} (the export --init-from continues)"
        metadata = read_metadata(init_from)
        saved = config_from_dict(type(config), metadata.get("config"), f"the metadata of {init_from}")
        step = metadata.get("meta_steps_trained", 0)
        started = {k: overrides[k] for k in asked_schedules if restart or not getattr(saved, k)}
        running = [f"{k} = {getattr(saved, k)} from meta-step {getattr(saved, schedules[k])}"
                   for k in asked_schedules if k not in started and getattr(saved, k) != overrides[k]]
        if running:
            raise ValueError(f"{init_from} was trained with {', '.join(running)}: a continuation goes on with that "
                             "schedule; to begin it again at the export's step, ask for a warm restart "
                             "(--warm-restart).")
        if restart and overrides.get("meta_steps", saved.meta_steps) <= step:
            raise ValueError(f"{init_from} was trained {step} meta-steps: a warm restart from there needs more "
                             f"(--meta-steps above {step}, e.g. {step} + the schedule's length).")
        if started:
            saved = dataclasses.replace(saved, **started, **{schedules[k]: step for k in started},
                                        **{k: overrides[k] for k in peaks if k in overrides})
        saved = dataclasses.replace(saved, **{k: getattr(config, k) for k in retarget})
    else:
        return config
    asked = {**{k: getattr(config, k) for k in identity}, **{k: v for k, v in overrides.items() if k != "meta_steps"}}
    check_resume_settings(saved, asked, where, flag_hint="flags other than --meta-steps")
    return dataclasses.replace(saved, meta_steps=overrides.get("meta_steps", saved.meta_steps))


class _SaveCheckpoint(keras.callbacks.Callback):
    def __init__(self, manager: tf.train.CheckpointManager) -> None:
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=self.model.meta_steps_done())


BEST_DIR = "best"
BEST_FILE = "best.json"


class _KeepBest(keras.callbacks.Callback):
    """Keep the ``keep`` checkpoints of the epochs with the best ``monitor`` (the highest accuracy, the lowest
    loss) in ``checkpoints/best``, ranked in ``best.json``: the newest-three rotation of the run's own checkpoints
    would drop them. MAML++ reports the ensemble of a run's five best epochs by validation (see
    :func:`best_checkpoints`). It runs before the epoch's checkpoint is saved, so an epoch interrupted in
    between is trained again and ranked then."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, keep: int, monitor: str) -> None:
        super().__init__()
        self.checkpoint, self.directory, self.keep, self.monitor = checkpoint, directory, keep, monitor

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            reported = sorted(k for k in logs if k.startswith("val_"))
            if reported:
                raise ValueError(f"keep_best ranks epochs by {self.monitor!r}, which validation does not report: "
                                 f"pass one of {reported} as monitor.")
            return  # no validation this epoch: nothing to rank
        value = float(logs[self.monitor])
        if not math.isfinite(value):
            return
        step = self.model.meta_steps_done()
        ranking = read_best(self.directory)
        ranked = [e for e in ranking["checkpoints"] if e["meta_step"] != step] if ranking else []  # a rerun epoch
        ranked.append({"meta_step": step, self.monitor: value, "checkpoint": f"ckpt-{step}"})
        sign = -1 if higher_is_better(self.monitor) else 1
        ranked.sort(key=lambda e: (sign * e[self.monitor], e["meta_step"]))  # ties: the earlier epoch
        kept = ranked[:self.keep]
        os.makedirs(self.directory, exist_ok=True)
        if any(e["meta_step"] == step for e in kept):
            self.checkpoint.save_counter  # noqa: B018 -- created before the run's first save: restores expect it
            self.checkpoint.write(os.path.join(self.directory, f"ckpt-{step}"))
        path = os.path.join(self.directory, BEST_FILE)
        with open(path + ".tmp", "w") as f:  # after the new file, before the dropped go: none it lists is missing
            json.dump({"monitor": self.monitor, "keep": self.keep, "checkpoints": kept}, f, indent=2)
        os.replace(path + ".tmp", path)
        listed = {e["checkpoint"] for e in kept}
        for name in os.listdir(self.directory):  # the dropped, and whatever an interrupted write left
            if name != BEST_FILE and name.split(".")[0] not in listed:
                target = os.path.join(self.directory, name)
                shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: accuracies are, losses and errors are not (Keras's "auto" mode)."""
    return "acc" in metric


def read_best(directory: str) -> dict | None:
    """The ranking :class:`_KeepBest` keeps in ``directory`` (``monitor``, ``keep`` and the ``checkpoints``,
    best first), or None."""
    path = os.path.join(directory, BEST_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _kept_count(ranking: dict) -> int:
    return ranking.get("keep", len(ranking["checkpoints"]))  # rankings written before "keep" was recorded


def kept_best(workdir: str) -> int | None:
    """How many best checkpoints the run in ``workdir`` keeps, or None if it keeps none."""
    ranking = read_best(os.path.join(workdir, "checkpoints", BEST_DIR))
    return _kept_count(ranking) if ranking else None


def _check_ranking(directory: str, keep: int, monitor: str) -> None:
    """Refuse to go on with a run's ranking by another monitor, or keeping fewer (which deletes kept files)."""
    ranking = read_best(directory)
    if ranking is None:
        return
    path, theirs = os.path.join(directory, BEST_FILE), _kept_count(ranking)
    if ranking["monitor"] != monitor:
        raise ValueError(f"{path} ranks checkpoints by {ranking['monitor']!r}, not {monitor!r}: keep ranking by "
                         f"{ranking['monitor']!r}, or move {directory} away to begin a new ranking.")
    if keep < theirs:
        raise ValueError(f"{path} keeps the {theirs} best checkpoints; keep_best={keep} would "
                         f"{'leave that ranking stale' if not keep else 'delete some of them'}: keep at least "
                         f"{theirs} (--keep-best {theirs}), or move {directory} away first.")


def best_checkpoints(workdir: str, count: int) -> list[str]:
    """The checkpoint paths of the ``count`` best epochs of the run in ``workdir`` by validation, best first
    (kept when it trained with ``keep_best``; see :func:`fit_resumable`). For an ensemble of a run's snapshots,
    as MAML++ reports its figures, or to pick its best epoch rather than its last."""
    check_value("count", count, integer(1))
    directory = os.path.join(workdir, "checkpoints", BEST_DIR)
    ranked = (read_best(directory) or {}).get("checkpoints", [])
    if len(ranked) < count:
        asked = f"{count} best checkpoint{'s' * (count > 1)} asked of {workdir}, but it keeps"
        if not ranked:
            raise ValueError(f"{asked} none (trained without keep_best, or not validated yet): train it with "
                             f"--keep-best {count} (at least).")
        raise ValueError(f"{asked} {len(ranked)}: ask for at most {len(ranked)}, or train with --keep-best {count}.")
    return [os.path.join(directory, e["checkpoint"]) for e in ranked[:count]]


class _RecordBudget(keras.callbacks.Callback):
    """Keep ``budget.json`` (meta-steps reached, wall seconds and sessions, summed over resumed runs)
    current at every checkpoint, so a run stopped by hand still reports what it actually spent."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_train_begin(self, logs=None):
        self.before = read_budget(self.path)
        self.before["sessions"] += 1
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        spent = round(self.before["wall_seconds"] + time.perf_counter() - self.started, 1)
        budget = {**self.before, "meta_steps": self.model.meta_steps_done(), "wall_seconds": spent}
        with open(self.path + ".tmp", "w") as f:
            json.dump(budget, f, indent=2)
        os.replace(self.path + ".tmp", self.path)


def read_budget(path: str) -> dict:
    """The training budget recorded at ``path`` (zeros when there is none yet)."""
    budget = dict(EMPTY_BUDGET)
    if os.path.exists(path):
        with open(path) as f:
            budget.update(json.load(f))
    return budget


def checkpoint_manager(maml: MAML, directory: str, max_to_keep: int = 3) -> tf.train.CheckpointManager:
    if maml.optimizer is None:
        raise RuntimeError("compile() the meta-learner before creating its checkpoint manager.")
    with maml.distribute_strategy.scope():  # under a strategy its slots must be mirrored variables
        maml.optimizer.build(maml.trainable_variables)
    ckpt = tf.train.Checkpoint(model=maml, optimizer=maml.optimizer)
    return tf.train.CheckpointManager(ckpt, directory, max_to_keep=max_to_keep)


def restore_latest(maml: MAML, directory: str) -> int:
    """Restore the newest checkpoint in ``directory`` if there is one; return the meta-step reached."""
    manager = checkpoint_manager(maml, directory)
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return maml.meta_steps_done()


def check_continues(workdir: str, export: str, recorded: str | None) -> None:
    """Refuse ``--init-from export`` for a run directory that did not start from it (``recorded``: the export
    version it started from, if any). The export given may be that version or its model directory, even if newer
    versions have been exported there since, and need not exist any more: the run resumes from its own state."""
    given = os.path.realpath(export)
    if recorded is None or given not in (recorded, os.path.dirname(recorded)):
        began = f"started from {recorded}" if recorded else "not started from an export"
        raise ValueError(f"{workdir} already holds a run ({began}), not one continuing {export}: drop --init-from "
                         "to resume it, or continue the export in a new directory.")


def _optimizer_state(optimizer: keras.optimizers.Optimizer) -> list:
    """The step and slots (Adam's moments) an optimizer carries; not a constant rate's variable, which the
    run's own settings give (and a schedule, such as a continuation's annealing, replaces)."""
    return [v for v in optimizer.variables if v.path.rsplit("/", 1)[-1] != "learning_rate"]


def start_from_export(maml: MAML, export: str, workdir: str, config: object | None = None) -> int:
    """Begin the run in ``workdir`` where the training of an exported meta-learner stopped; return its meta-step.

    Run directories stay on the machine that trained them; what travels is the export (``saved_models/``), and its
    meta-learner carries the weights and the optimizer's state and step. Written here as the run's first
    checkpoint, with the export's training budget, they let :func:`fit_resumable` go on as after any interruption:
    the episode stream is indexed by step, so the batches are those the original run would have seen next. Build
    ``maml`` with the export's settings (:func:`config_for_run` with ``init_from``). A rerun of the same command
    resumes from the run's own checkpoints; a run that did not start from this export is refused. With the run's
    ``config`` (a dataclass), the budget's ``changes`` (carried over from the export's, as its budget is) gains
    the settings this run changed from the export's, with the meta-step and export they changed at.
    """
    from tf_maml.serving import load, read_metadata, resolve_version_dir, source_path

    ckpt_dir = os.path.join(workdir, "checkpoints")
    budget_path = os.path.join(workdir, "budget.json")
    if tf.train.latest_checkpoint(ckpt_dir) or os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        check_continues(workdir, export, read_budget(budget_path).get("initialised_from"))
        if tf.train.latest_checkpoint(ckpt_dir):
            return restore_latest(maml, ckpt_dir)
    source = os.path.realpath(resolve_version_dir(export))  # local bookkeeping, whatever the working directory
    metadata = read_metadata(source)
    exported = load(source)
    ours, theirs = [tuple(v.shape) for v in maml.weights], [tuple(v.shape) for v in exported.weights]
    if ours != theirs:
        raise ValueError(f"{export} holds a meta-learner of another shape ({len(theirs)} weights {theirs[:3]}..., "
                         f"this run builds {len(ours)}, {ours[:3]}...): build the run with the export's settings "
                         "(its metadata's config).")
    for mine, saved in zip(maml.weights, exported.weights):
        mine.assign(saved)
    manager = checkpoint_manager(maml, ckpt_dir)  # builds the optimizer's slots
    if exported.optimizer is not None and exported.optimizer.built:
        mine, saved = _optimizer_state(maml.optimizer), _optimizer_state(exported.optimizer)
        if [tuple(v.shape) for v in mine] != [tuple(v.shape) for v in saved]:
            raise ValueError(f"The optimizer state in {export} does not fit this run's optimizer "
                             f"({type(exported.optimizer).__name__} there, {type(maml.optimizer).__name__} here).")
        for ours, theirs in zip(mine, saved):
            ours.assign(theirs)
    step = maml.meta_steps_done()
    if step != metadata.get("meta_steps_trained", step):
        raise ValueError(f"The optimizer state of {export} did not load (step {step}, its metadata says "
                         f"{metadata['meta_steps_trained']}): continuing would restart the episode stream and every "
                         "schedule at step 0. Nothing was written.")
    spent = metadata.get("training") or {}
    budget = {**EMPTY_BUDGET, **{k: spent[k] for k in (*EMPTY_BUDGET, "discarded_meta_steps") if k in spent},
              "meta_steps": step, "initialised_from": source}
    changes = list(spent.get("changes", []))
    if config is not None:
        theirs = metadata.get("config") or {}
        changed = {k: [theirs[k], v] for k, v in dataclasses.asdict(config).items()
                   if k != "meta_steps" and k in theirs and theirs[k] != v}
        if changed:
            changes.append({"meta_step": step, "from": source_path(source), "settings": changed})
    if changes:
        budget["changes"] = changes
    os.makedirs(workdir, exist_ok=True)
    with open(budget_path, "w") as f:
        json.dump(budget, f, indent=2)
    manager.save(checkpoint_number=step)
    return step


def fit_resumable(
    maml: MAML,
    make_dataset: Callable[[int], tf.data.Dataset],
    total_steps: int,
    steps_per_epoch: int,
    workdir: str,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    validation_data: tf.data.Dataset | None = None,
    validation_steps: int | None = None,
    tensorboard: bool = True,
    verbose: int | str = "auto",
    keep_best: int = 0,
    monitor: str = "val_accuracy",
) -> keras.callbacks.History | None:
    """Meta-train ``maml`` to ``total_steps`` meta-steps, resuming from ``workdir/checkpoints`` if present.

    TensorBoard logs go to ``workdir/logs``; ``workdir/budget.json`` records the meta-steps and wall time
    spent so far. With ``keep_best``, the checkpoints of that many epochs with the best ``monitor`` (a
    validation metric: the highest accuracy, the lowest loss) are also kept, in ``checkpoints/best`` (see
    :func:`best_checkpoints`); epochs trained without it are not ranked. Returns the Keras history, or None
    when already done.
    """
    check_value("steps_per_epoch", steps_per_epoch, integer(1))
    check_value("keep_best", keep_best, integer(0))
    if keep_best and validation_data is None:
        raise ValueError(f"keep_best={keep_best} ranks epochs by {monitor!r}, a validation figure: pass "
                         "validation_data, or keep_best=0.")
    for problem in (epochs_problem(total_steps, steps_per_epoch),
                    execution_problem(steps_per_epoch, int(getattr(maml, "steps_per_execution", 1) or 1))):
        if problem:
            raise ValueError(problem + ".")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    manager = checkpoint_manager(maml, ckpt_dir)
    start = restore_latest(maml, ckpt_dir)
    if start % steps_per_epoch:
        raise ValueError(
            f"The checkpoint in {ckpt_dir} is at meta-step {start}, not a multiple of steps_per_epoch "
            f"({steps_per_epoch}): resume with the steps_per_epoch the run was started with (e.g. in its config.json), "
            "or one that divides the checkpoint's step."
        )
    if start >= total_steps:
        return None
    all_callbacks = [_SaveCheckpoint(manager), _RecordBudget(os.path.join(workdir, "budget.json")), *callbacks]
    _check_ranking(os.path.join(ckpt_dir, BEST_DIR), keep_best, monitor)
    if keep_best:
        all_callbacks.insert(0, _KeepBest(manager.checkpoint, os.path.join(ckpt_dir, BEST_DIR), keep_best, monitor))
    if tensorboard:
        all_callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq="epoch"))
    return maml.fit(
        make_dataset(start),
        steps_per_epoch=steps_per_epoch,
        initial_epoch=start // steps_per_epoch,
        epochs=total_steps // steps_per_epoch,
        callbacks=all_callbacks,
        validation_data=validation_data,
        validation_steps=validation_steps,
        verbose=verbose,
    )
