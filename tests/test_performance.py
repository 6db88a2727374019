"""Process-wide performance settings: they take effect, and a setting made too late fails clearly."""

import os
import subprocess
import sys
import textwrap

import pytest

from tf_maml.performance import set_graph_optimization

SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf
    from tf_maml.performance import run_tasks_in_parallel, set_graph_optimization

    set_graph_optimization("fusion")
    options = tf.config.optimizer.get_experimental_options()
    assert options["remapping"] is True, options
    assert options["function_optimization"] is False and options["constant_folding"] is False, options
    run_tasks_in_parallel(3)
    assert tf.config.threading.get_intra_op_parallelism_threads() == 1
    assert tf.config.threading.get_inter_op_parallelism_threads() == 3
    tf.constant(1.0) + 1.0  # the runtime starts here
    try:
        run_tasks_in_parallel(2)
    except RuntimeError as err:
        assert "before TensorFlow runs its first op" in str(err), err
        print("ok")
    """
)


def test_settings_apply_and_late_thread_setting_fails_clearly():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok"), result.stdout


def test_unknown_graph_optimization_level_is_rejected():
    with pytest.raises(ValueError, match="full"):
        set_graph_optimization("fastest")
