"""tf_maml: Model-Agnostic Meta-Learning for Keras 3 on TensorFlow."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tf_maml.episode_batch import EpisodeBatch  # noqa: E402
from tf_maml.maml import MAML, MetaLossNotFiniteError  # noqa: E402
from tf_maml.models.fused_batch_norm import FusedBatchNormalization  # noqa: E402  (registers it for loading)
from tf_maml.serving import load  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MAML", "EpisodeBatch", "FusedBatchNormalization", "MetaLossNotFiniteError", "load", "__version__"]
