"""Episode sampler properties on small synthetic class tensors whose images identify themselves."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tf_maml.data.episodes import episode_dataset

C, E, H = 12, 6, 4


def make_images(num_classes: int = C, examples: int = E, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).rand(num_classes, examples, H, H, 1).astype(np.float32)


def lookup_table(images: np.ndarray) -> dict[bytes, tuple[int, int, int]]:
    """bytes of every base image under each rotation -> (class, example, quarter_turns)."""
    table = {}
    for c in range(images.shape[0]):
        for e in range(images.shape[1]):
            for k in range(4):
                table[np.rot90(images[c, e], k, axes=(0, 1)).tobytes()] = (c, e, k)
    return table


def decode(table, batch: np.ndarray) -> list[tuple[int, int, int]]:
    return [table[np.ascontiguousarray(x).tobytes()] for x in batch]


def take(ds: tf.data.Dataset, n: int) -> list[tuple[np.ndarray, ...]]:
    return [tuple(t.numpy() for t in el) for el in ds.take(n)]


def test_shapes_dtypes_and_label_layout():
    ds = episode_dataset(make_images(), ways=5, shots=2, queries=3, meta_batch=4, seed=0)
    sx, sy, qx, qy = next(iter(ds))
    assert sx.shape == (4, 10, H, H, 1) and sx.dtype == tf.float32
    assert qx.shape == (4, 15, H, H, 1)
    assert sy.dtype == tf.int32 and qy.dtype == tf.int32
    np.testing.assert_array_equal(sy, np.tile(np.repeat(np.arange(5), 2), (4, 1)))
    np.testing.assert_array_equal(qy, np.tile(np.repeat(np.arange(5), 3), (4, 1)))
    assert ds.element_spec[0].shape.as_list() == [4, 10, H, H, 1]


@pytest.mark.parametrize("rotations", [1, 4])
def test_classes_distinct_and_support_query_disjoint(rotations, check_episodes):
    images = make_images()
    seen = check_episodes(images, take(episode_dataset(images, 5, 2, 3, 8, seed=1, rotations=rotations), 3), 5, 2, 3)
    if rotations == 1:
        assert {k for _, k in seen} == {0}
    else:
        assert {k for _, k in seen} == {0, 1, 2, 3}, "rotated classes are sampled"


def test_label_assignment_is_random_per_episode():
    images = make_images()
    table = lookup_table(images)
    (sx, _, _, _), = take(episode_dataset(images, 3, 1, 0, 64, seed=2), 1)
    first_class = [decode(table, sx[t])[0][0] for t in range(64)]
    labels_of_class0 = {j for t in range(64) for j, (c, _, _) in enumerate(decode(table, sx[t])) if c == 0}
    assert len(set(first_class)) > 3
    assert labels_of_class0 == {0, 1, 2}


def test_same_seed_same_episodes_other_seed_different():
    images = make_images()
    a = take(episode_dataset(images, 5, 1, 1, 4, seed=7), 3)
    b = take(episode_dataset(images, 5, 1, 1, 4, seed=7), 3)
    c = take(episode_dataset(images, 5, 1, 1, 4, seed=8), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[2], y[2])
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][0], a[1][0]), "steps differ"


def test_start_step_resumes_exact_sequence_and_tasks_are_indexed_by_episode():
    images = make_images()
    full = take(episode_dataset(images, 5, 2, 2, 4, seed=3), 6)
    resumed = take(episode_dataset(images, 5, 2, 2, 4, seed=3, start_step=3), 3)
    for x, y in zip(full[3:], resumed):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    # Task t of step s is episode s * meta_batch + t, whatever the batching.
    single = take(episode_dataset(images, 5, 2, 2, None, seed=3, start_step=4 * 2 + 1), 1)[0]
    np.testing.assert_array_equal(single[0], full[2][0][1])
    np.testing.assert_array_equal(single[2], full[2][2][1])


def test_num_steps_makes_a_finite_dataset():
    ds = episode_dataset(make_images(), 5, 1, 1, 2, seed=0, start_step=10, num_steps=3)
    assert len(list(ds)) == 3


def test_rotated_class_is_quarter_turns_of_original():
    images = make_images(num_classes=2)
    table = lookup_table(images)
    (sx, _, qx, _), = take(episode_dataset(images, 8, 1, 1, 16, seed=0, rotations=4), 1)
    seen = set()
    for t in range(16):
        for c, e, k in decode(table, np.concatenate([sx[t], qx[t]])):
            seen.add((c, k))
    assert seen == {(c, k) for c in range(2) for k in range(4)}


@pytest.mark.parametrize("rotations", [1, 4])
def test_ragged_classes_with_varying_counts(rotations, check_episodes):
    rng = np.random.RandomState(0)
    counts = [3, 5, 8, 4, 6, 3]
    per_class = [rng.rand(n, H, H, 1).astype(np.float32) for n in counts]
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(per_class), counts)
    episodes = take(episode_dataset(ragged, 4, 1, 2, 8, seed=0, rotations=rotations), 2)
    assert episodes[0][0].shape == (8, 4, H, H, 1) and episodes[0][2].shape == (8, 8, H, H, 1)
    check_episodes(per_class, episodes, 4, 1, 2)
    with pytest.raises(ValueError, match=r"smallest class .* only 3 examples"):
        episode_dataset(ragged, 2, 2, 2, 1, seed=0)


def test_too_many_ways_or_shots_raise_clear_errors():
    images = make_images()
    with pytest.raises(ValueError, match=r"13-way .* only 12 classes.*lower `ways`"):
        episode_dataset(images, 13, 1, 1, 1, seed=0)
    with pytest.raises(ValueError, match=r"only 48 classes"):
        episode_dataset(images, 49, 1, 1, 1, seed=0, rotations=4)
    episode_dataset(images, 48, 1, 1, 1, seed=0, rotations=4)  # exactly enough
    with pytest.raises(ValueError, match=r"shots \+ queries = 4 \+ 3 = 7 .* only 6 examples.*lower `shots`"):
        episode_dataset(images, 5, 4, 3, 1, seed=0)
    with pytest.raises(ValueError, match="rotations"):
        episode_dataset(images, 5, 1, 1, 1, seed=0, rotations=2)
