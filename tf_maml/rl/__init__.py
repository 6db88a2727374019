"""Meta-reinforcement learning (MAML-TRPO, Finn et al. 2017, section 5.3).

Importing this package registers the task environments with gymnasium (``tf_maml/...`` ids). It
deliberately imports no TensorFlow so that vector-env worker processes stay light; import the
submodules (``tf_maml.rl.maml_trpo`` etc.) for the learner.
"""

from tf_maml.rl.envs import register_envs

register_envs()

__all__ = ["register_envs"]
