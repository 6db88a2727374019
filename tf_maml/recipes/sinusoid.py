"""The paper's sinusoid experiment end to end: meta-train, pretrain the baseline, evaluate, plot."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import ClassVar

import keras
import numpy as np

from tf_maml import training
from tf_maml.baselines import pretrain_on_all_tasks
from tf_maml.data.sinusoid import sample_sinusoid_tasks, sinusoid_episodes
from tf_maml.evaluation import scores_after_adaptation, summarize, task_mse
from tf_maml.maml import MAML
from tf_maml.models.mlp import sinusoid_mlp
from tf_maml.settings import (BOOLEAN, Rule, check_settings, each, epochs_problem, execution_problem, integer,
                              number)
from tf_maml.training import fit_resumable, read_budget


@dataclasses.dataclass
class SinusoidConfig:
    """Defaults are the paper's protocol (Finn et al. 2017, section 5.1)."""

    shots: int = 10
    meta_batch: int = 25
    meta_steps: int = 70_000
    steps_per_epoch: int = 1_000
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_steps: tuple[int, ...] = (0, 1, 10)
    meta_lr: float = 1e-3
    first_order: bool = False
    eval_tasks: int = 600
    seed: int = 0
    steps_per_execution: int = 100

    RUN_KIND: ClassVar[str] = "a sinusoid run or export (scripts/train_sinusoid.py)"
    RULES: ClassVar[dict[str, Rule]] = {
        "shots": integer(1), "meta_batch": integer(1), "meta_steps": integer(1), "steps_per_epoch": integer(1),
        "inner_lr": number(0, low_open=True), "inner_steps": integer(0), "eval_steps": each(integer(0), nonempty=True),
        "meta_lr": number(0, low_open=True), "first_order": BOOLEAN, "eval_tasks": integer(1), "seed": integer(0),
        "steps_per_execution": integer(1),
    }

    def __post_init__(self) -> None:
        check_settings(self, self.RULES, also=[epochs_problem(self.meta_steps, self.steps_per_epoch),
                                               execution_problem(self.steps_per_epoch, self.steps_per_execution)])
        self.eval_steps = tuple(self.eval_steps)  # a list after a JSON round trip


PRESETS = {
    "paper": SinusoidConfig(),
    "demo": SinusoidConfig(meta_steps=15_000, steps_per_epoch=1_000),
    "smoke": SinusoidConfig(meta_steps=200, steps_per_epoch=100, eval_tasks=50),
}


def config_for_run(preset: str, overrides: dict, workdir: str | None = None) -> tuple[SinusoidConfig, str]:
    """The settings of a run and its directory (default ``runs/sinusoid_<preset>``); an existing run keeps
    its own settings (see :func:`tf_maml.training.config_for_run`)."""
    workdir = workdir or os.path.join("runs", f"sinusoid_{preset}")
    config = dataclasses.replace(PRESETS[preset], **overrides)
    return training.config_for_run(config, overrides, workdir), workdir


def build_meta_learner(config: SinusoidConfig) -> MAML:
    maml = MAML(sinusoid_mlp(seed=config.seed), inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                eval_inner_steps=max(config.eval_steps), first_order=config.first_order)
    maml.compile(optimizer=keras.optimizers.Adam(config.meta_lr), loss="mse",
                 steps_per_execution=config.steps_per_execution)
    return maml


def run(config: SinusoidConfig, workdir: str, verbose: int | str = 2) -> dict:
    """Train (resuming if ``workdir`` has checkpoints), evaluate on held-out tasks, draw the figure.

    Returns the results that are also written to ``workdir/results.json``.
    """
    training.save_config(config, workdir)
    maml = build_meta_learner(config)
    fit_resumable(
        maml,
        lambda start: sinusoid_episodes(config.meta_batch, config.shots, seed=config.seed, start_step=start),
        config.meta_steps, config.steps_per_epoch, workdir, verbose=verbose,
    )
    budget = read_budget(os.path.join(workdir, "budget.json"))  # summed over every session of the run
    maml.save(os.path.join(workdir, "maml.keras"))

    baseline = pretrain_on_all_tasks(sinusoid_mlp(seed=config.seed),
                                     sinusoid_episodes(config.meta_batch, config.shots, seed=config.seed),
                                     steps=min(config.meta_steps, 20_000), learning_rate=config.meta_lr)
    baseline_maml = MAML(baseline, inner_lr=config.inner_lr)
    baseline_maml.compile(loss="mse")

    # Held-out tasks come from a seed that training never uses.
    held_out = sinusoid_episodes(100, config.shots, seed=config.seed + 10_000)
    results = {"config": dataclasses.asdict(config), "train_seconds": round(budget["wall_seconds"], 1),
               "meta_steps_done": maml.meta_steps_done()}
    for label, learner in (("maml", maml), ("pretrained", baseline_maml)):
        scores = scores_after_adaptation(learner, held_out, config.eval_steps, task_mse, config.eval_tasks)
        results[label] = {str(s): {"mse": m, "ci95": c} for s, (m, c) in summarize(scores).items()}
    results["figure"] = plot_adaptation(maml, baseline_maml, config, os.path.join(workdir, "sinusoid_adaptation.png"))
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def plot_adaptation(maml: MAML, baseline: MAML, config: SinusoidConfig, path: str) -> str:
    """The paper's Figure 2: true curve, support points, predictions before and after 1 and 10 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (sx, sy, _, _), (amp, phase) = sample_sinusoid_tasks([config.seed + 20_000, 0], 1, config.shots, 1)
    grid = np.linspace(-5, 5, 200, dtype=np.float32).reshape(1, -1, 1)
    truth = amp.numpy()[0] * np.sin(grid[0, :, 0] - phase.numpy()[0])
    steps = (0, 1, 10)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (title, learner) in zip(axes, (("MAML", maml), ("pretrained", baseline))):
        preds = learner.predict_after_adaptation(sx, sy, grid, steps=steps)
        ax.plot(grid[0, :, 0], truth, "r", label="ground truth")
        for k, style in zip(steps, (":", "--", "-")):
            ax.plot(grid[0, :, 0], preds[k if k < 2 else 2][0, :, 0], style, color="tab:green",
                    label="pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}")
        ax.plot(sx[0, :, 0], sy[0, :, 0], "^", color="purple", label=f"{config.shots} points used for grad")
        ax.set_title(f"{title}, K={config.shots}")
        ax.set_ylim(-6, 6)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def export(workdir: str, base_dir: str, name: str = "sinusoid") -> str:
    """Export the meta-learner trained in ``workdir`` for TF Serving (``adapt_and_predict`` included), with
    the settings it was trained with."""
    import tensorflow as tf

    from tf_maml.serving import export_meta_learner, source_path

    config = training.load_config(SinusoidConfig, workdir)
    maml = keras.models.load_model(os.path.join(workdir, "maml.keras"))
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    metadata = {
        "task_family": "sinusoid regression (Finn et al. 2017): amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5]",
        "preprocessing": "none: x is the raw input in [-5, 5]",
        "config": dataclasses.asdict(config),
        "training": {"meta_steps": results["meta_steps_done"], "wall_seconds": results["train_seconds"]},
        "held_out_mse": results["maml"],
        "source_keras": source_path(os.path.join(workdir, "maml.keras")),
    }
    return export_meta_learner(maml, base_dir, name, metadata=metadata,
                               support_y_spec=tf.TensorSpec([None, 1], tf.float32))
