"""tf_maml: Model-Agnostic Meta-Learning for Keras 3 on TensorFlow."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tf_maml.episode_batch import EpisodeBatch  # noqa: E402
from tf_maml.maml import MAML, MetaLossNotFiniteError  # noqa: E402
from tf_maml.serving import load  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MAML", "EpisodeBatch", "MetaLossNotFiniteError", "load", "__version__"]
