"""Process-wide TensorFlow settings that measured faster for MAML on CPU (see BENCHMARKS.md)."""

from __future__ import annotations

import tensorflow as tf


def skip_graph_optimization() -> None:
    """Turn off Grappler for this process.

    MAML's second-order graphs are large: for the Omniglot conv net (meta-batch 32, 2 CPU cores) Grappler
    spent ~30 s optimising the meta-step before the first step and the optimised step was no faster
    (0.34 s either way). tf.data pipelines keep their own optimisations. Call before the first step.
    """
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
