"""The Omniglot loader and episodes on the real data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tf_maml.data.omniglot import OmniglotNotFoundError, load_omniglot_classes, omniglot_episodes


def test_paper_split_sizes_and_disjoint_characters(paper_classes):
    train, val, test = paper_classes.meta_train, paper_classes.meta_val, paper_classes.meta_test
    assert (train.num_characters, val.num_characters, test.num_characters) == (1100, 100, 423)
    assert train.images.shape == (1100, 20, 28, 28, 1) and train.images.dtype == tf.float32
    ids = [set(s.label_ids.tolist()) for s in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set.union(*ids) == set(range(1623))
    assert train.num_classes == 4400 and test.num_classes == 1692
    # Both alphabet groups feed the paper's meta-test (it ignores alphabets).
    assert (test.label_ids < 964).any() and (test.label_ids >= 964).any()


def test_tfds_split_is_background_vs_evaluation(tfds_classes):
    train, test = tfds_classes.meta_train, tfds_classes.meta_test
    assert (train.num_characters, test.num_characters) == (964, 659)
    assert not set(train.label_ids.tolist()) & set(test.label_ids.tolist())
    assert train.label_ids.max() < test.label_ids.min()


def test_images_are_ink_on_zero_background(paper_classes):
    x = paper_classes.meta_test.images.numpy()
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert 0.02 < x.mean() < 0.25, "mostly background (0) with ink (1) strokes"
    assert x[:, :, 0, 0].max() < 0.05, "corners are paper, not ink"
    assert np.unique(x.reshape(x.shape[0], -1), axis=0).shape[0] == x.shape[0], "characters differ"


def test_rotated_classes_are_quarter_turns_and_episodes_hold_them(paper_classes):
    split = paper_classes.meta_test
    n = split.num_characters
    for k in range(4):
        np.testing.assert_array_equal(split.class_images(k * n + 5).numpy(), np.rot90(split.images[5].numpy(), k, axes=(1, 2)))
    base = split.images.numpy()
    table = {}
    for c in range(n):
        for k in range(4):
            for e, img in enumerate(np.rot90(base[c], k, axes=(1, 2))):
                table.setdefault(img.tobytes(), (c, k, e))
    ways, shots, queries = 20, 1, 5
    sx, sy, qx, qy = (t.numpy() for t in next(iter(omniglot_episodes(split, ways, shots, queries, 4, seed=0))))
    rotations = set()
    for t in range(4):
        labels = np.concatenate([sy[t], qy[t]])
        found = [table[np.ascontiguousarray(x).tobytes()] for x in np.concatenate([sx[t], qx[t]])]
        per_label = [[f for f, l in zip(found, labels) if l == y] for y in range(ways)]
        assert all(len(m) == shots + queries for m in per_label)
        assert all(len({(c, k) for c, k, _ in m}) == 1 for m in per_label)
        assert all(len({e for _, _, e in m}) == shots + queries for m in per_label), "support/query disjoint"
        assert len({m[0][:2] for m in per_label}) == ways
        rotations.update(m[0][1] for m in per_label)
    assert rotations == {0, 1, 2, 3}


def test_real_episodes_are_reproducible_and_resume(paper_classes):
    split = paper_classes.meta_train
    a = [el[0].numpy() for el in omniglot_episodes(split, 5, 1, 1, 8, seed=11).take(4)]
    b = [el[0].numpy() for el in omniglot_episodes(split, 5, 1, 1, 8, seed=11, start_step=2).take(2)]
    c = [el[0].numpy() for el in omniglot_episodes(split, 5, 1, 1, 8, seed=12).take(1)]
    np.testing.assert_array_equal(a[2], b[0])
    np.testing.assert_array_equal(a[3], b[1])
    assert not np.array_equal(a[0], c[0])


def test_too_many_ways_or_shots_on_real_split(paper_classes):
    with pytest.raises(ValueError, match=r"1693-way .* only 1692 classes"):
        omniglot_episodes(paper_classes.meta_test, 1693, 1, 1, 1, seed=0)
    with pytest.raises(ValueError, match=r"= 21 .* only 20 examples"):
        omniglot_episodes(paper_classes.meta_test, 5, 1, 20, 1, seed=0)


def test_manual_dir_with_non_official_archives_is_a_clear_error(real_data_dir, tmp_path):
    archives = Path(real_data_dir).parent / "omniglot"
    if not (archives / "images_background.zip").exists():
        pytest.skip(f"Omniglot archives not found in {archives}")
    # The archives provided here are re-encoded, so TFDS's checksum check refuses them (in < 1 s).
    with pytest.raises(OmniglotNotFoundError, match="manual_dir"):
        load_omniglot_classes(data_dir=tmp_path / "tfds", manual_dir=archives, cache=False)
