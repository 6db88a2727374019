"""Few-shot episode pipelines: in-memory class tensors, Omniglot and any TFDS image dataset, image folders."""

from tf_maml.data.episodes import episode_dataset, indexed_episode_dataset
from tf_maml.data.image_folder import image_folder_episodes
from tf_maml.data.omniglot import ClassSplit, OmniglotClasses, OmniglotNotFoundError, load_omniglot_classes, omniglot_episodes
from tf_maml.data.tfds_classes import TFDSClasses, TFDSNotAvailableError, load_tfds_classes

__all__ = [
    "ClassSplit",
    "OmniglotClasses",
    "OmniglotNotFoundError",
    "TFDSClasses",
    "TFDSNotAvailableError",
    "episode_dataset",
    "image_folder_episodes",
    "indexed_episode_dataset",
    "load_omniglot_classes",
    "load_tfds_classes",
    "omniglot_episodes",
]
