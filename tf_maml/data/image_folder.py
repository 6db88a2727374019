"""Episodes from a folder of class folders (MiniImagenet and the like), decoded lazily in tf.data.

Layout: ``root/<class_name>/<image file>``. Only file paths live in memory; the images of each
sampled task are read, decoded and resized inside the pipeline, so a dataset of any size works.
Episode semantics are those of :mod:`tf_maml.data.episodes` (same sampler, same seeding).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_maml.data.episodes import indexed_episode_dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """``(class_names, files_per_class)``, both sorted so class ids are stable across machines.

    Sub-folders without any image file are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist or is not a directory.")
    names, files = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(str(p) for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if images:
            names.append(class_dir.name)
            files.append(images)
    if not names:
        raise FileNotFoundError(
            f"No class folders with images ({', '.join(IMAGE_EXTENSIONS)}) under {root}; "
            "expected root/<class_name>/<image files>."
        )
    return names, files


def load_image(path: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """Read, decode and resize one image to ``[H, W, channels]`` float32 in [0, 1]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(image, image_size, antialias=True)


def image_folder_episodes(
    root: str | os.PathLike,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int | None,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
    image_size: tuple[int, int] = (84, 84),
    channels: int = 3,
) -> tf.data.Dataset:
    """N-way K-shot episodes over the class folders of ``root``; images are ``[H, W, channels]`` float32 in [0, 1].

    Yields ``(support_x [B, N*K, H, W, C], support_y [B, N*K], query_x [B, N*Q, H, W, C], query_y [B, N*Q])``.
    """
    _, files = list_image_folder(root)
    sizes = np.array([len(f) for f in files], np.int64)
    paths = tf.constant([p for class_files in files for p in class_files])
    starts = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]), tf.int32)
    size = tuple(int(s) for s in image_size)

    def fetch(classes: tf.Tensor, example_ids: tf.Tensor) -> tf.Tensor:
        task_paths = tf.gather(paths, tf.gather(starts, classes)[:, tf.newaxis] + example_ids)
        images = tf.map_fn(
            lambda p: load_image(p, size, channels),
            tf.reshape(task_paths, [-1]),
            fn_output_signature=tf.TensorSpec([*size, channels], tf.float32),
        )
        return tf.reshape(images, [ways, shots + queries, *size, channels])

    return indexed_episode_dataset(
        fetch, sizes, ways, shots, queries, meta_batch, seed,
        start_step=start_step, num_steps=num_steps, source=f"the image folder {root}",
    )
