"""Omniglot N-way K-shot classification as in the MAML paper (section 5.2): presets, training, evaluation."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import ClassVar, Sequence

import keras

from tf_maml import training
from tf_maml.callbacks import EpisodeImages
from tf_maml.data.omniglot import (EXAMPLES_PER_CLASS, OmniglotClasses, OmniglotNotFoundError, load_omniglot_classes,
                                   omniglot_episodes)
from tf_maml.evaluation import scores_after_adaptation, summarize, task_accuracy
from tf_maml.maml import (BATCH_NORM_MODES, LEARN_INNER_LR, MAML, TASK_EXECUTIONS, learn_inner_lr_problem,
                          per_step_batch_norm_problem)
from tf_maml.models.convnets import omniglot_convnet
from tf_maml.settings import BOOLEAN, Rule, check_settings, check_value, epochs_problem, integer, number, one_of, optional
from tf_maml.training import fit_resumable, read_budget, restore_latest

SPLITS = ("paper", "tfds")


@dataclasses.dataclass
class OmniglotConfig:
    """The paper's hyperparameters. The paper's α (0.4 for 5-way, 0.1 for 20-way) multiplies a loss summed
    over the N classes and averaged over the K shots, i.e. N × the mean cross-entropy; our loss is the mean,
    so the equivalent step size is N·α (2.0 in both cases)."""

    ways: int = 5
    shots: int = 1
    queries: int | None = None  # K query images per class, as in the paper
    meta_batch: int = 32
    inner_steps: int = 1
    eval_inner_steps: int = 10
    inner_lr: float = 2.0
    meta_lr: float = 1e-3
    meta_steps: int = 60_000
    steps_per_epoch: int = 200
    first_order: bool = False
    split: str = "paper"
    seed: int = 0
    validation_tasks: int = 160
    eval_tasks: int = 600
    task_execution: str = "loop"
    batch_norm: str = "transductive"  # or "running"; see MAML(batch_norm=...)
    learn_inner_lr: bool | str = False  # MAML++'s per-step rates: "per_step"; see MAML(learn_inner_lr=...)
    multi_step_loss: int = 0  # MAML++'s multi-step loss, annealed over this many meta-steps (0: off)
    first_order_until: int = 0  # MAML++'s derivative-order annealing: first order for this many meta-steps
    cosine_meta_lr: int = 0  # MAML++'s cosine annealing: meta_lr to 1% of it over this many meta-steps (0: off)
    cosine_meta_lr_from: int = 0  # the meta-step it starts (meta_lr constant before): a continuation's first
    per_step_batch_norm: bool = False  # MAML++'s per-step batch-norm weights; see MAML(per_step_batch_norm=...)

    RUN_KIND: ClassVar[str] = "an Omniglot run or export (scripts/train_omniglot.py)"
    RULES: ClassVar[dict[str, Rule]] = {
        "ways": integer(1), "shots": integer(1), "queries": optional(integer(1)), "meta_batch": integer(1),
        "inner_steps": integer(0), "eval_inner_steps": integer(0), "inner_lr": number(0, low_open=True),
        "meta_lr": number(0, low_open=True), "meta_steps": integer(1), "steps_per_epoch": integer(1),
        "first_order": BOOLEAN, "split": one_of(*SPLITS), "seed": integer(0), "validation_tasks": integer(1),
        "eval_tasks": integer(1), "task_execution": one_of(*TASK_EXECUTIONS), "batch_norm": one_of(*BATCH_NORM_MODES),
        "learn_inner_lr": LEARN_INNER_LR, "multi_step_loss": integer(0),
        "first_order_until": integer(0), "cosine_meta_lr": integer(0), "cosine_meta_lr_from": integer(0),
        "per_step_batch_norm": BOOLEAN,
    }

    def __post_init__(self) -> None:
        check_settings(self, self.RULES, also=[epochs_problem(self.meta_steps, self.steps_per_epoch),
                                               learn_inner_lr_problem(self.learn_inner_lr, self.inner_steps),
                                               per_step_batch_norm_problem(self.per_step_batch_norm,
                                                                           self.inner_steps),
                                               self.cosine_meta_lr_from and not self.cosine_meta_lr and
                                               "cosine_meta_lr_from is set but cosine_meta_lr is 0: no annealing "
                                               "to start (set both, or neither)"])

    @property
    def name(self) -> str:
        return f"omniglot_{self.ways}way{self.shots}shot"

    @property
    def query_count(self) -> int:
        """Query images per class: ``queries``, or as many as the shots (the paper's K queries)."""
        return self.queries or self.shots


PRESETS = {
    "5way1shot": OmniglotConfig(),
    "5way5shot": OmniglotConfig(shots=5),
    "20way1shot": OmniglotConfig(ways=20, meta_batch=16, inner_steps=5, inner_lr=0.1 * 20),
    "20way5shot": OmniglotConfig(ways=20, shots=5, meta_batch=16, inner_steps=5, inner_lr=0.1 * 20),
}


DEFAULT_PRESET = "5way1shot"
KEEP_BEST = 5  # MAML++ reports the ensemble of a run's five best epochs by validation


def config_for_run(preset: str | None, overrides: dict, workdir: str | None = None,
                   init_from: str | None = None, warm_restart: bool = False) -> tuple[OmniglotConfig, str]:
    """The settings of a training run and its directory (default ``runs/<name>``); an existing run keeps
    its own settings, a run continuing an export (``init_from``) takes the export's (see
    :func:`tf_maml.training.config_for_run`). With no ``preset``, that of the run or export (so resuming a
    20-way run needs no ``--preset``), else 5-way 1-shot. Another N-way than the run's or export's is refused,
    and so is another K-shot on resume; a new continuation may go on at the K-shot of a ``preset`` asked for
    (``--preset 20way5shot`` from a 20-way 1-shot export): the network does not depend on K. ``warm_restart``:
    the continuation begins the cosine annealing of the meta learning rate again at the export's step, from
    ``meta_lr`` (an export that anneals otherwise goes on with its own schedule); a continuation that begins the
    annealing may give it another ``meta_lr`` to begin from."""
    asked_preset = preset is not None
    preset = preset or _preset_of(workdir, init_from) or DEFAULT_PRESET
    named = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if k in ("ways", "shots")})
    workdir = workdir or os.path.join("runs", named.name)
    continuing = init_from is not None or os.path.exists(os.path.join(workdir, training.CONFIG_FILE))
    # A run going on checks the flags against its own settings (the preset's may not fit them: epoch lengths)
    config = named if continuing else dataclasses.replace(PRESETS[preset], **overrides)
    config = training.config_for_run(config, overrides, workdir, identity=("ways", "shots"), init_from=init_from,
                                     schedules={"cosine_meta_lr": "cosine_meta_lr_from"}, restart=warm_restart,
                                     retarget=("shots",) if asked_preset else (), peaks=("meta_lr",))
    return config, workdir


def _preset_of(workdir: str | None, init_from: str | None) -> str | None:
    """The preset named by the N-way K-shot of the run in ``workdir``, or else of the export ``init_from``."""
    if workdir and os.path.exists(os.path.join(workdir, training.CONFIG_FILE)):
        saved = config_from_workdir(workdir)
    elif init_from:
        from tf_maml.serving import read_metadata

        saved = training.config_from_dict(OmniglotConfig, read_metadata(init_from).get("config"),
                                          f"the metadata of {init_from}")
    else:
        return None
    name = f"{saved.ways}way{saved.shots}shot"
    return name if name in PRESETS else None


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags every Omniglot script shares (read back by :func:`load_classes`)."""
    parser.add_argument("--data-dir", help="TFDS data_dir holding omniglot/3.0.0 (default: $TF_MAML_DATA_DIR or TFDS's)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: if the data is not prepared, stop and say where it looked")
    parser.add_argument("--manual-dir", help="a folder with the four official Omniglot archives: build the TFDS "
                                             "dataset from them without internet (checksums are checked)")


def load_classes(args: argparse.Namespace, split: str, parser: argparse.ArgumentParser | None = None) -> OmniglotClasses:
    """The classes of ``split`` as the data flags ask; with ``parser``, missing data stops the script with
    its usage error, naming the flags that fix it (the library's message names the arguments)."""
    try:
        return load_omniglot_classes(split, data_dir=args.data_dir, download=not args.offline,
                                     manual_dir=args.manual_dir, validation=True)
    except OmniglotNotFoundError as err:
        if parser is None:
            raise
        parser.error(f"{err}\nWith this script: --data-dir DIR (or TF_MAML_DATA_DIR=DIR) for a prepared copy, "
                     "no --offline to download it, or --manual-dir FOLDER for the four archives.")


def build_meta_learner(config: OmniglotConfig) -> MAML:
    maml = MAML(omniglot_convnet(config.ways), inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                eval_inner_steps=config.eval_inner_steps, first_order=config.first_order,
                task_execution=config.task_execution, batch_norm=config.batch_norm,
                learn_inner_lr=config.learn_inner_lr, multi_step_loss=config.multi_step_loss,
                first_order_until=config.first_order_until, per_step_batch_norm=config.per_step_batch_norm)
    maml.compile(optimizer=keras.optimizers.Adam(meta_learning_rate(config)),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return maml


def meta_learning_rate(config: OmniglotConfig) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Adam's rate: ``meta_lr``, or with ``cosine_meta_lr`` MAML++'s cosine annealing to 1% of it (1e-5 from
    1e-3, as MAML++ does), held there after; from meta-step ``cosine_meta_lr_from`` if a continuation started it
    (constant before: Keras's warm-up from ``meta_lr`` to itself). The horizon is its own setting, not
    ``meta_steps``, which a resumed run may extend: the schedule of a run must not change under it."""
    if not config.cosine_meta_lr:
        return config.meta_lr
    start = config.cosine_meta_lr_from
    hold = {"warmup_target": config.meta_lr, "warmup_steps": start} if start else {}
    return keras.optimizers.schedules.CosineDecay(config.meta_lr, decay_steps=config.cosine_meta_lr, alpha=0.01,
                                                  **hold)


def episodes(config: OmniglotConfig, split, seed: int, start_step: int = 0, meta_batch: int | None = None):
    return omniglot_episodes(split, config.ways, config.shots, config.query_count,
                             meta_batch or config.meta_batch, seed, start_step=start_step)


def train(config: OmniglotConfig, workdir: str, data: OmniglotClasses | None = None, verbose: int | str = "auto",
          data_dir: str | None = None, init_from: str | None = None, keep_best: int | None = None) -> MAML:
    """Meta-train (resuming from ``workdir`` if it has checkpoints, or continuing the exported meta-learner
    ``init_from``: see :func:`tf_maml.training.start_from_export`), validating every epoch and keeping the
    checkpoints of the ``keep_best`` best epochs by validation accuracy (an ensemble's members; default: as
    many as the run keeps already, else :data:`KEEP_BEST`)."""
    if keep_best is None:
        keep_best = training.kept_best(workdir) or KEEP_BEST
    data = data or load_omniglot_classes(config.split, data_dir=data_dir, validation=True)
    maml = build_meta_learner(config)
    if init_from is not None:
        training.start_from_export(maml, init_from, workdir, config)
    os.makedirs(workdir, exist_ok=True)
    training.save_config(config, workdir)
    train_data = lambda start: episodes(config, data.meta_train, config.seed, start)  # noqa: E731
    val_batch = config.validation_tasks // config.meta_batch or 1
    fit_resumable(
        maml, train_data, config.meta_steps, config.steps_per_epoch, workdir,
        callbacks=[EpisodeImages(os.path.join(workdir, "logs"), next(iter(train_data(0))))],
        validation_data=episodes(config, data.meta_val, config.seed + 1).take(val_batch).cache(),
        validation_steps=val_batch, verbose=verbose, keep_best=keep_best,
    )
    maml.save(os.path.join(workdir, "maml.keras"))
    return maml


EVALUATION_CLASSES = ("test", "validation")


def evaluate(maml: MAML | Sequence[MAML], config: OmniglotConfig, data: OmniglotClasses, tasks: int, seed: int,
             steps: tuple[int, ...] | None = None, classes: str = "test", rotations: int | None = None) -> dict:
    """Accuracy on freshly sampled tasks, mean and 95% interval, after each number of steps: on meta-test
    characters, or (``classes="validation"``) on the meta-validation ones, where choices such as the number of
    test-time steps can be made without looking at the characters the result is reported on. A list of
    meta-learners is evaluated as an ensemble (see :func:`load_ensemble`). ``rotations=1`` draws the unrotated
    characters only (MAML++'s test protocol; rotations augment its training only), 4 every character in four
    rotations as distinct classes (the MAML paper's, the splits' default)."""
    check_value("tasks", tasks, integer(1))
    check_value("classes", classes, one_of(*EVALUATION_CLASSES))
    check_value("rotations", rotations, optional(one_of(1, 4)))
    split = data.meta_test if classes == "test" else data.meta_val
    if split is None:
        raise ValueError("classes='validation' needs meta-validation characters: load the classes with "
                         "validation=True (the scripts do).")
    if rotations is not None:
        split = dataclasses.replace(split, rotations=rotations)
    steps = steps or (0, config.inner_steps, config.eval_inner_steps)
    sampled = episodes(config, split, seed + 1_000_003, meta_batch=min(tasks, 50))
    scores = scores_after_adaptation(maml, sampled, steps, task_accuracy, tasks)
    summary = summarize(scores)
    final = summary[max(steps)]
    return {"accuracy": final[0], "ci95": final[1], "tasks": tasks, "steps": max(steps), "classes": classes,
            "rotations": split.rotations,
            "by_steps": {str(s): {"accuracy": m, "ci95": c} for s, (m, c) in summary.items()}}


def with_shots(config: OmniglotConfig, shots: int) -> OmniglotConfig:
    """``config`` on K-shot tasks of ``shots`` support images per class (and as many queries, unless the run set
    its own number): the network does not depend on K, so a learner meta-trained at one K adapts at another."""
    check_value("shots", shots, integer(1))
    served = dataclasses.replace(config, shots=shots)
    queries = served.query_count
    if shots + queries > EXAMPLES_PER_CLASS:
        raise ValueError(f"{shots} shots and {queries} queries per class need {shots + queries} drawings of each "
                         f"character; Omniglot has {EXAMPLES_PER_CLASS} (support and query are disjoint): ask for "
                         f"at most {EXAMPLES_PER_CLASS - (config.queries or EXAMPLES_PER_CLASS // 2)} shots.")
    return served


def config_from_workdir(workdir: str) -> OmniglotConfig:
    return training.load_config(OmniglotConfig, workdir)


def load_for_evaluation(workdir: str | None = None, saved_model: str | None = None,
                        checkpoint: str | None = None,
                        eval_inner_steps: int | None = None) -> tuple[MAML, OmniglotConfig]:
    """The meta-learner and its configuration, from a training directory's newest checkpoint (or its
    ``checkpoint``, e.g. one of :func:`tf_maml.training.best_checkpoints`) or from a shipped SavedModel (whose
    metadata carries the configuration). ``eval_inner_steps`` (a training directory's only) replaces the run's
    test-time steps: a number chosen on meta-validation, which an export then serves."""
    if checkpoint is not None and workdir is None:
        raise ValueError("checkpoint= picks one of a training directory's checkpoints: give the workdir too.")
    if eval_inner_steps is not None and workdir is None:
        raise ValueError("eval_inner_steps= sets the test-time steps of a training directory's meta-learner "
                         "(before export); a shipped model serves its own: pass steps to its evaluation instead.")
    if workdir is not None:
        config = config_from_workdir(workdir)
        if eval_inner_steps is not None:
            config = dataclasses.replace(config, eval_inner_steps=eval_inner_steps)  # checked by the config
        maml = build_meta_learner(config)
        if checkpoint is not None:
            from tf_maml.serving import restore_checkpoint

            restore_checkpoint(maml, checkpoint)
            return maml, config
        step = restore_latest(maml, os.path.join(workdir, "checkpoints"))
        if step == 0:
            raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints; train first (scripts/train_omniglot.py).")
        return maml, config
    from tf_maml.serving import load

    config = _evaluation_config("saved_model", saved_model)
    return load(saved_model), config  # loaded once its metadata says it is an Omniglot model


@dataclasses.dataclass(frozen=True)
class EnsembleMember:
    """One member of an ensemble: a training directory's checkpoint (its newest: None) or a shipped model."""

    kind: str  # "workdir" or "saved_model"
    path: str
    checkpoint: str | None = None

    @property
    def name(self) -> str:
        return self.checkpoint or self.path

    def load(self) -> MAML:
        return load_for_evaluation(**{self.kind: self.path}, checkpoint=self.checkpoint)[0]


def plan_ensemble(workdirs: Sequence[str] = (), saved_models: Sequence[str] = (),
                  best: int = 0) -> tuple[list[EnsembleMember], OmniglotConfig]:
    """The members of an ensemble and the configuration of the first, whose tasks they are all evaluated on,
    checked without loading a model (see :func:`load_ensemble`). With ``best``, each training directory gives
    the checkpoints of its ``best`` best epochs by validation (MAML++'s protocol: ``best=5``), not its newest."""
    check_value("best", best, integer(0))
    sources = [("workdir", w) for w in workdirs] + [("saved_model", m) for m in saved_models]
    if not sources:
        raise ValueError("An ensemble needs at least one training directory or saved model.")
    from tf_maml.serving import resolve_version_dir

    paths = [os.path.realpath(resolve_version_dir(path) if kind == "saved_model" else path) for kind, path in sources]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise ValueError(f"{sources[i][1]} is listed twice: each member of an ensemble counts once.")
    first = _evaluation_config(*sources[0])
    for kind, path in sources[1:]:
        config = _evaluation_config(kind, path)
        for field in ("ways", "split"):
            if getattr(config, field) != getattr(first, field):
                raise ValueError(f"{path} has {field}={getattr(config, field)!r} but {sources[0][1]} has "
                                 f"{getattr(first, field)!r}: an ensemble's members must classify the same ways "
                                 "and hold out the same meta-test characters.")
    members = []
    for kind, path in sources:
        snapshots = training.best_checkpoints(path, best) if best and kind == "workdir" else [None]
        members += [EnsembleMember(kind, path, checkpoint) for checkpoint in snapshots]
    return members, first


def load_ensemble(workdirs: Sequence[str] = (), saved_models: Sequence[str] = (),
                  best: int = 0) -> tuple[list[MAML], OmniglotConfig]:
    """Meta-learners to evaluate as one ensemble (their adapted logits averaged, as MAML++ reports its figures),
    with the configuration of the first (see :func:`plan_ensemble`). They must classify the same number of ways
    and hold out the same meta-test characters (the same split); they may differ in anything else, e.g.
    snapshots at the end of successive warm restarts of one run (a snapshot ensemble), or a run's best epochs."""
    members, config = plan_ensemble(workdirs, saved_models, best)
    return [member.load() for member in members], config


def _evaluation_config(kind: str, path: str) -> OmniglotConfig:
    """The configuration of a training directory (``kind="workdir"``) or of a shipped meta-learner, read
    without loading its model."""
    if kind == "workdir":
        return config_from_workdir(path)
    from tf_maml.serving import read_metadata

    return training.config_from_dict(OmniglotConfig, read_metadata(path).get("config"), f"the metadata of {path}")


def export(workdir: str, base_dir: str, data: OmniglotClasses, results: dict | None = None,
           name: str | None = None, checkpoint: str | None = None, eval_inner_steps: int | None = None) -> str:
    """Export the newest checkpoint of ``workdir`` (or its ``checkpoint``, e.g. its best epoch by validation)
    as a served meta-learner, with metadata listing the meta-test classes (TFDS label ids; each also appears
    rotated by 90/180/270°) and the budget spent: the run's wall time so far, also when the checkpoint is an
    earlier one (``discarded_meta_steps`` then counts the steps trained past it, which that time includes).
    ``eval_inner_steps``: the test-time steps it serves, if not the run's (chosen on meta-validation)."""
    from tf_maml.serving import export_meta_learner, source_path

    maml, config = load_for_evaluation(workdir=workdir, checkpoint=checkpoint, eval_inner_steps=eval_inner_steps)
    budget = read_budget(os.path.join(workdir, "budget.json"))
    step = maml.meta_steps_done()
    if checkpoint is not None and budget["meta_steps"] > step:  # summed over the lineage, as the wall time is
        budget["discarded_meta_steps"] = budget.get("discarded_meta_steps", 0) + budget["meta_steps"] - step
    budget["meta_steps"] = step
    if "initialised_from" in budget:  # an absolute path of this machine, kept out of what ships
        budget["initialised_from"] = source_path(budget["initialised_from"])
    if "changes" in budget:
        budget["changes"] = [{**change, "from": source_path(change["from"])} for change in budget["changes"]]
    metadata = {
        "task_family": f"Omniglot {config.ways}-way {config.shots}-shot classification ({config.split} split)",
        "preprocessing": "TFDS omniglot 105x105 image, first channel, ink = 1 - pixel / 255, resized to 28x28 "
                         "(lanczos3, antialiased), float32 [28, 28, 1] in [0, 1]; rotations by multiples of 90 "
                         "degrees are distinct classes",
        "num_classes": config.ways,
        "config": dataclasses.asdict(config),
        "training": {**budget, "paper_meta_steps": 60_000},
        "meta_test_tfds_label_ids": sorted(int(i) for i in data.meta_test.label_ids),
        "meta_test_rotations": data.meta_test.rotations,
        "source_checkpoint": source_path(checkpoint or os.path.join(workdir, "checkpoints")),
    }
    if results is not None:
        metadata["meta_test_accuracy"] = results
    return export_meta_learner(maml, base_dir, name or config.name, metadata=metadata)
