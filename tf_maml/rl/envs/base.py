"""The task API shared by every meta-RL env: sample tasks from a seed, set one on reset, read it back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

Task = dict[str, Any]


class TaskMixin:
    """Mixin for a gymnasium env whose reward depends on a task dict.

    Tasks are JSON-serialisable dicts so they can be logged, exported as metadata and passed across
    process boundaries (``AsyncVectorEnv.set_attr("task", [...])``). ``reset(options={"task": t})``
    switches task; a plain ``reset`` keeps the current one, so seeded resets stay reproducible.
    """

    _task: Task

    def _sample_task(self, rng: np.random.Generator) -> Task:
        raise NotImplementedError

    def _validate_task(self, task: Task) -> Task:
        raise NotImplementedError

    def sample_tasks(self, n: int, seed: int | None = None) -> list[Task]:
        """``n`` tasks drawn from the task distribution; the same seed always gives the same list."""
        rng = np.random.default_rng(seed)
        return [self._sample_task(rng) for _ in range(n)]

    @property
    def task(self) -> Task:
        return dict(self._task)

    @task.setter
    def task(self, task: Task) -> None:
        task = self._validate_task(dict(task))
        json.dumps(task)  # fail early on anything that is not JSON-serialisable
        self._task = task

    def _apply_reset_options(self, options: dict | None) -> None:
        if options and "task" in options:
            self.task = options["task"]
