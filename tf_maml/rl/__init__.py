"""Meta-reinforcement learning (MAML-TRPO, Finn et al. 2017, section 5.3).

Importing this package registers the task environments with gymnasium (``tf_maml/...`` ids); import the
submodules (``tf_maml.rl.maml_trpo`` etc.) for the learner. It imports ``tf_maml`` and so TensorFlow (the
top-level package registers its Keras classes for ``keras.models.load_model``): vector-env workers forked
from the learner (Linux's default start method) inherit it, spawned ones import it themselves.
"""

from tf_maml.rl.envs import register_envs

register_envs()

__all__ = ["register_envs"]
