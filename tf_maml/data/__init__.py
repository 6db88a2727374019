"""Few-shot episode pipelines: in-memory class tensors, Omniglot (TFDS) and image folders."""

from tf_maml.data.episodes import episode_dataset, indexed_episode_dataset
from tf_maml.data.image_folder import image_folder_episodes
from tf_maml.data.omniglot import ClassSplit, OmniglotClasses, OmniglotNotFoundError, load_omniglot_classes, omniglot_episodes

__all__ = [
    "ClassSplit",
    "OmniglotClasses",
    "OmniglotNotFoundError",
    "episode_dataset",
    "image_folder_episodes",
    "indexed_episode_dataset",
    "load_omniglot_classes",
    "omniglot_episodes",
]
