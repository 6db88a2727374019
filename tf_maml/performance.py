"""Process-wide TensorFlow settings that measured faster for MAML on CPU (see BENCHMARKS.md)."""

from __future__ import annotations

import os

import tensorflow as tf


GRAPH_OPTIMIZATION_LEVELS = ("full", "fusion", "off")

# Grappler passes other than the remapper (fusions); the names of tf.config.optimizer's options.
_OTHER_PASSES = ("layout_optimizer", "constant_folding", "shape_optimization", "arithmetic_optimization",
                 "dependency_optimization", "loop_optimization", "function_optimization", "debug_stripper",
                 "scoped_allocator_optimization", "pin_to_host_optimization", "implementation_selector",
                 "auto_mixed_precision")


def set_graph_optimization(level: str) -> None:
    """How much Grappler optimises this process's graphs: ``"full"``, ``"fusion"`` or ``"off"``.

    MAML's second-order graphs are large, so optimisation costs time before the first step. Measured
    side by side for the Omniglot conv net on 2 cores with one task per core (BENCHMARKS.md): ``"full"``
    (TensorFlow's default) took 20–37 s to the first step for no faster steps than ``"fusion"``, which keeps
    only the remapper (op fusions) and starts in 4–13 s; ``"off"`` starts as fast and steps up to ~20%
    slower. ``"fusion"`` is what the scripts use. tf.data pipelines keep their own optimisations.
    Call once, before the first step is traced: a later call does not restore passes an earlier one turned off.
    """
    if level not in GRAPH_OPTIMIZATION_LEVELS:
        raise ValueError(f"graph optimization level must be one of {GRAPH_OPTIMIZATION_LEVELS}, got {level!r}.")
    if level == "off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    elif level == "fusion":
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": False, "remapping": True, **{name: False for name in _OTHER_PASSES}})
    else:  # TensorFlow's defaults, as measured
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / container limits), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_tasks_in_parallel(threads: int | None = None) -> None:
    """Give each op one thread and run ``threads`` ops (default: one per core) side by side.

    A task's ops are small (five 28×28 images through a 64-channel conv), too small to split across
    cores well, while the tasks of a meta-batch are independent: with ``task_execution="loop"`` each is
    its own function call, which the executor runs concurrently. On 2 cores this cut the Omniglot
    5-way 1-shot second-order meta-step from 426 to 221 ms and 20-way 1-shot from 1405 to 955 ms
    (BENCHMARKS.md, same run). Must run before TensorFlow executes its first op.
    """
    inter = threads or usable_cores()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as err:
        raise RuntimeError(
            "run_tasks_in_parallel() must be called before TensorFlow runs its first op: "
            "call it at the top of the script, before building models or datasets."
        ) from err
