"""N-way K-shot episode sampling in the tf.data graph, reproducible from ``(seed, episode_index)``.

Every task is drawn with *stateless* random ops seeded by ``[seed, episode_index]``, where the
episode index of task ``t`` of meta-step ``s`` is ``s * meta_batch + t``. The dataset is therefore a
pure function of the step: a run resumed with ``start_step=s`` sees exactly the batches that an
uninterrupted run would have seen from step ``s`` on, whatever the parallelism of the pipeline.

Episode layout (what the MAML engine may rely on):

* the ``ways`` classes of a task are distinct and appear in a random order; the class in position
  ``i`` gets label ``i``, so labels are ``0..ways-1`` remapped afresh in every episode;
* support example ``j`` has label ``j // shots`` and query example ``j`` has label ``j // queries``
  (class-major order);
* support and query examples of a class are distinct examples (sampled without replacement).

The sampler only draws indices; a *fetch* function turns ``(class_ids, example_ids)`` into
images, so the same sampler serves in-memory tensors (:func:`episode_dataset`) and files on disk
(:mod:`tf_maml.data.image_folder`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

Episode = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]  # support_x, support_y, query_x, query_y
FetchFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (classes [N], examples [N, K+Q]) -> [N, K+Q, ...]

_INT64_MAX = np.iinfo(np.int64).max


def check_episode_args(
    num_classes: int, min_examples: int, ways: int, shots: int, queries: int, *, source: str = "the data"
) -> None:
    """Raise a ``ValueError`` that says what to change when an episode cannot be drawn."""
    for name, value, low in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 0)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if ways > num_classes:
        raise ValueError(
            f"{ways}-way episodes need {ways} distinct classes but {source} has only {num_classes} "
            f"classes: lower `ways` to at most {num_classes}, or use a split with more classes."
        )
    if shots + queries > min_examples:
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {shots + queries} examples per class are needed "
            f"(support and query are disjoint) but the smallest class of {source} has only "
            f"{min_examples} examples: lower `shots` and/or `queries` so that shots + queries <= "
            f"{min_examples}."
        )


def sample_task_indices(
    seed: tf.Tensor, class_sizes: tf.Tensor, ways: int, examples: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw one task: ``ways`` distinct classes in random order and ``examples`` distinct examples each.

    ``seed`` is a shape-[2] int64 stateless seed; ``class_sizes`` is ``[num_classes]`` int32 (the
    number of examples of each class, which may differ). Returns ``classes [ways]`` and within-class
    example indices ``[ways, examples]``, both int32. ``top_k`` of i.i.d. uniforms is a uniformly
    random ordered subset, so no shuffle is needed afterwards.
    """
    class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    num_classes = tf.shape(class_sizes)[0]
    classes = tf.math.top_k(tf.random.stateless_uniform([num_classes], class_seed), k=ways).indices
    sizes = tf.gather(class_sizes, classes)
    max_size = tf.reduce_max(class_sizes)
    scores = tf.random.stateless_uniform([ways, max_size], example_seed)
    # Positions past a class's size get -1 and are never among the top `examples` (checked upstream).
    valid = tf.range(max_size)[tf.newaxis, :] < sizes[:, tf.newaxis]
    scores = tf.where(valid, scores, -tf.ones_like(scores))
    example_ids = tf.math.top_k(scores, k=examples).indices
    return tf.cast(classes, tf.int32), tf.cast(example_ids, tf.int32)


def split_task(images: tf.Tensor, ways: int, shots: int, queries: int) -> Episode:
    """``[ways, shots+queries, ...]`` images -> class-major ``(support_x, support_y, query_x, query_y)``."""
    inner = tf.shape(images)[2:]
    support_x = tf.reshape(images[:, :shots], tf.concat([[ways * shots], inner], 0))
    query_x = tf.reshape(images[:, shots:], tf.concat([[ways * queries], inner], 0))
    support_y = tf.repeat(tf.range(ways, dtype=tf.int32), shots)
    query_y = tf.repeat(tf.range(ways, dtype=tf.int32), queries)
    return support_x, support_y, query_x, query_y


def indexed_episode_dataset(
    fetch: FetchFn,
    class_sizes: np.ndarray | tf.Tensor,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int | None,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
    source: str = "the data",
) -> tf.data.Dataset:
    """Episodes over any indexable class collection; ``fetch`` maps sampled indices to images.

    With ``meta_batch=None`` the dataset yields single episodes (step == episode index).
    ``num_steps=None`` means endless.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(f"class_sizes must be a non-empty 1-D array, got shape {sizes.shape}.")
    check_episode_args(int(sizes.size), int(sizes.min()), ways, shots, queries, source=source)
    if meta_batch is not None and meta_batch < 1:
        raise ValueError(f"meta_batch must be >= 1 or None, got {meta_batch}.")
    sizes_t = tf.constant(sizes, tf.int32)
    per_step = 1 if meta_batch is None else int(meta_batch)
    first = int(start_step) * per_step
    last = _INT64_MAX if num_steps is None else first + int(num_steps) * per_step
    base_seed = tf.constant(int(seed), tf.int64)

    def one_task(episode_index: tf.Tensor) -> Episode:
        classes, example_ids = sample_task_indices(
            tf.stack([base_seed, episode_index]), sizes_t, ways, shots + queries
        )
        return split_task(fetch(classes, example_ids), ways, shots, queries)

    ds = tf.data.Dataset.range(first, last).map(
        one_task, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if meta_batch is not None:
        ds = ds.batch(per_step, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def rotation_pixel_maps(size: int) -> np.ndarray:
    """``[4, size*size]`` maps with ``rot90(x, k).flat[p] == x.flat[maps[k, p]]`` (counter-clockwise).

    Rotating by gathering pixels folds the rotation into the one gather that fetches the task,
    several times faster than rotating the fetched images.
    """
    grid = np.arange(size * size).reshape(size, size)
    return np.stack([np.rot90(grid, k).reshape(-1) for k in range(4)]).astype(np.int32)


def class_sizes_of(images: tf.Tensor | tf.RaggedTensor | np.ndarray) -> np.ndarray:
    """Examples per class of a dense ``[C, E, ...]`` or ragged ``[C, (E), ...]`` class tensor."""
    if isinstance(images, tf.RaggedTensor):
        return images.row_lengths().numpy()
    shape = images.shape
    return np.full([shape[0]], shape[1], dtype=np.int64)


def episode_dataset(
    images: tf.Tensor | tf.RaggedTensor | np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int | None,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
    rotations: int = 1,
) -> tf.data.Dataset:
    """Episodes from an in-memory class tensor ``[num_classes, examples, H, W, C]`` (dense or ragged).

    ``rotations=4`` turns every class into 4 classes (0/90/180/270°, the Omniglot augmentation of
    Santoro et al. used by MAML) without materialising them: class id ``r * num_classes + c`` is
    class ``c`` rotated by ``r`` quarter turns counter-clockwise.

    Yields ``(support_x [B, N*K, H, W, C], support_y [B, N*K] int32, query_x [B, N*Q, ...],
    query_y [B, N*Q] int32)``; the batch dimension is absent when ``meta_batch`` is None.
    """
    if rotations not in (1, 4):
        raise ValueError(f"rotations must be 1 (none) or 4 (multiples of 90°), got {rotations}.")
    ragged = isinstance(images, tf.RaggedTensor)
    if not ragged:
        images = tf.convert_to_tensor(images)
        if images.shape.rank is None or images.shape.rank < 2:
            raise ValueError(f"images must be [num_classes, examples, ...], got shape {images.shape}.")
    if rotations > 1 and (images.shape.rank != 5 or images.shape[2] != images.shape[3]):
        raise ValueError(f"rotations need square [C, E, H, H, channels] images, got shape {images.shape}.")
    base_sizes = class_sizes_of(images)
    num_base = len(base_sizes)
    if ragged:
        flat_images, starts = images.flat_values, tf.cast(images.row_starts(), tf.int32)
    else:
        flat_images = tf.reshape(images, [-1, *images.shape[2:]])  # a view: no copy
        starts = tf.constant(np.arange(num_base) * images.shape[1], tf.int32)
    image_shape = flat_images.shape[1:]
    if rotations > 1:
        side, pixels = image_shape[0], image_shape[0] * image_shape[1]
        flat_pixels = tf.reshape(flat_images, [-1, image_shape[2]])
        index_dtype = tf.int32 if flat_pixels.shape[0] < 2**31 else tf.int64
        pixel_maps = tf.constant(rotation_pixel_maps(side), index_dtype)

    def fetch(classes: tf.Tensor, example_ids: tf.Tensor) -> tf.Tensor:
        rows = tf.gather(starts, classes % num_base)[:, tf.newaxis] + example_ids  # [N, M] flat examples
        if rotations == 1:
            return tf.gather(flat_images, rows)
        turns = tf.gather(pixel_maps, classes // num_base)  # [N, H*W] source pixel of each target pixel
        pixel_ids = tf.cast(rows, index_dtype)[:, :, tf.newaxis] * pixels + turns[:, tf.newaxis, :]
        return tf.reshape(tf.gather(flat_pixels, pixel_ids), [ways, -1, *image_shape])

    return indexed_episode_dataset(
        fetch, np.tile(base_sizes, rotations), ways, shots, queries, meta_batch, seed,
        start_step=start_step, num_steps=num_steps,
        source=f"the class tensor ({num_base} classes x {rotations} rotations)" if rotations > 1 else "the class tensor",
    )
