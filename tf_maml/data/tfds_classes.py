"""Any TFDS image-classification dataset as an in-memory class tensor, ready for ``episode_dataset``.

Few-shot datasets are small (Omniglot is 32k drawings), so a split is read once, grouped by label and
kept in memory; episodes then gather from it in the graph. Omniglot has its own loader
(:mod:`tf_maml.data.omniglot`) for the paper's preprocessing and class splits; this one is for the rest
(e.g. ``"mnist"``, ``"cifar100"`` or a dataset of your own registered with TFDS).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf


class TFDSNotAvailableError(FileNotFoundError):
    """The dataset is not prepared in ``data_dir`` and may not (or could not) be downloaded."""


@dataclasses.dataclass(frozen=True)
class TFDSClasses:
    """The examples of one split grouped by class: ``images[c]`` are the examples of ``label_ids[c]``."""

    images: tf.Tensor | tf.RaggedTensor  # [C, E, H, W, channels] float32, ragged in E if classes differ in size
    label_ids: np.ndarray  # [C] the dataset's label of each class, ascending
    label_names: list[str] | None  # names of label_ids when the label is a ClassLabel with names

    @property
    def num_classes(self) -> int:
        return len(self.label_ids)


def _prepared_builder(name: str, data_dir: str | None, download: bool):
    import tensorflow_datasets as tfds  # heavy import, only when data is actually loaded

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(f"TFDS has no dataset named {name!r} ({err}). See tfds.list_builders().") from err
    if builder.is_prepared():
        return builder
    where = f"{builder.data_dir} (data_dir={data_dir!r})"
    if not download:
        raise TFDSNotAvailableError(
            f"TFDS dataset {name!r} is not prepared in {where} and download=False. Pass data_dir=<dir holding "
            f"{name}/<version>>, or download=True on a machine with internet access."
        )
    try:
        builder.download_and_prepare()
    except Exception as err:  # network, checksum, manual-download errors: the data is not available here
        raise TFDSNotAvailableError(
            f"TFDS dataset {name!r} is not prepared in {where} and could not be downloaded "
            f"({type(err).__name__}: {err}). Pass data_dir=<dir holding a prepared copy>."
        ) from err
    return builder


def _check_features(builder, image_key: str, label_key: str) -> list[str] | None:
    import tensorflow_datasets as tfds

    features = builder.info.features
    keys = sorted(features.keys()) if hasattr(features, "keys") else []
    for role, key in (("image_key", image_key), ("label_key", label_key)):
        if key not in keys:
            raise ValueError(f"{role}={key!r} is not a feature of {builder.info.name!r}; its features are {keys}.")
    label = features[label_key]
    if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(f"label_key={label_key!r} of {builder.info.name!r} is a {type(label).__name__}, "
                         "not a ClassLabel: episodes need a class label.")
    if len(features[image_key].shape) != 3:
        raise ValueError(f"image_key={image_key!r} of {builder.info.name!r} has shape {features[image_key].shape}; "
                         "expected an image [height, width, channels].")
    return list(label.names) if label.names else None


def load_tfds_classes(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    image_size: tuple[int, int] | None = None,
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> TFDSClasses:
    """Read ``split`` of TFDS dataset ``name`` and group it by ``label_key``.

    Integer images become float32 in [0, 1] (float images keep their values), resized to ``image_size``
    if given (needed when their sizes vary), then passed through ``preprocess`` (a graph function of one
    image) if given. Unlabelled examples (label −1, as in some test splits) are refused. ``download``
    works as in ``tfds.load``. Use classes of different splits (or a class split of your own over
    ``label_ids``) for meta-training and meta-testing so that they never share a class.
    """
    builder = _prepared_builder(name, None if data_dir is None else os.fspath(data_dir), download)
    label_names = _check_features(builder, image_key, label_key)

    def convert(example):
        image = tf.image.convert_image_dtype(example[image_key], tf.float32)
        if image_size is not None:
            image = tf.image.resize(image, image_size)
        if preprocess is not None:
            image = preprocess(image)
        return image, example[label_key]

    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
    try:
        parts = [(x.numpy(), y.numpy()) for x, y in ds]
    except tf.errors.InvalidArgumentError as err:
        if "shape" not in str(err).lower():
            raise
        raise ValueError(f"Images of {name!r} {split!r} differ in shape: pass image_size=(height, width) if their "
                         "sizes vary, or a preprocess that gives them the same channels. "
                         f"({str(err).splitlines()[0]})") from err
    if not parts:
        raise ValueError(f"Split {split!r} of {name!r} has no examples.")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if labels.min() < 0:
        raise ValueError(f"Split {split!r} of {name!r} has {int((labels < 0).sum())} unlabelled examples (label "
                         f"{int(labels.min())}); use a labelled split.")
    order = np.argsort(labels, kind="stable")
    ids, counts = np.unique(labels, return_counts=True)
    if np.all(counts == counts[0]):
        grouped = tf.constant(images[order].reshape(len(ids), counts[0], *images.shape[1:]))
    else:
        grouped = tf.RaggedTensor.from_row_lengths(images[order], counts)
    names = [label_names[i] for i in ids] if label_names else None
    return TFDSClasses(images=grouped, label_ids=ids, label_names=names)
