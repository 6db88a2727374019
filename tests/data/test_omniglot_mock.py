"""The TFDS plumbing of the Omniglot loader on mocked data (tfds.testing.mock_data): no real data needed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_maml.data.omniglot import OmniglotNotFoundError, load_omniglot_classes, omniglot_episodes

TRAIN_LABELS = list(range(0, 8))
TEST_LABELS = list(range(8, 12))


def fake_image(label: int, example: int) -> np.ndarray:
    """White 105×105×3 with black ink in the top-left 52×26 block, plus a label/example-dependent dot."""
    image = np.full((105, 105, 3), 255, np.uint8)
    image[:52, :26] = 0
    image[60 + 3 * label : 63 + 3 * label, 60 + 2 * example : 62 + 2 * example] = 0
    return image


def fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    labels = TRAIN_LABELS if str(split) == "train" else TEST_LABELS
    # Interleaved, as TFDS shards are: the loader must group by label itself.
    examples = [(l, e) for e in range(20) for l in labels]
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": np.stack([fake_image(l, e) for l, e in examples]),
            "label": np.array([l for l, _ in examples], np.int64),
            "alphabet": np.array([l // 4 for l, _ in examples], np.int64),
            "alphabet_char_id": np.array([l % 4 for l, _ in examples], np.int64),
        }
    )


@pytest.fixture
def mocked(tmp_path, monkeypatch):
    # mock_data replaces the download itself; the loader's network probe must not stop it first.
    monkeypatch.setattr("tf_maml.data.omniglot._network_reachable", lambda hosts: True)
    with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
        yield tmp_path


def test_preprocessing_grouping_and_tfds_split(mocked):
    classes = load_omniglot_classes("tfds", data_dir=mocked / "tfds", download=True, cache_dir=mocked / "cache")
    train, test = classes.meta_train, classes.meta_test
    assert classes.meta_val is None
    assert train.images.shape == (8, 20, 28, 28, 1) and train.images.dtype == tf.float32
    assert sorted(train.label_ids.tolist()) == TRAIN_LABELS and sorted(test.label_ids.tolist()) == TEST_LABELS
    x = train.images.numpy()
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x[:, :, 2:11, 1:5].min() > 0.95, "black ink maps to 1"
    assert x[:, :, 2:11, 12:16].max() < 0.05, "white paper maps to 0"
    assert train.num_classes == 32 and train.class_ids().shape == (32, 2)
    np.testing.assert_array_equal(train.class_images(8 + 3).numpy(), tf.image.rot90(train.images[3], 1).numpy())
    assert list((mocked / "cache").glob("*.npz")), "preprocessed arrays are cached"


def test_paper_split_is_a_fixed_shuffle_with_validation(mocked):
    kwargs = dict(data_dir=mocked / "tfds", download=True, cache_dir=mocked / "cache", num_train=9, num_val=3)
    a = load_omniglot_classes("paper", validation=True, **kwargs)
    b = load_omniglot_classes("paper", validation=True, **kwargs)
    no_val = load_omniglot_classes("paper", **kwargs)
    parts = [a.meta_train.label_ids, a.meta_val.label_ids, a.meta_test.label_ids]
    assert [len(p) for p in parts] == [6, 3, 3]
    assert sorted(np.concatenate(parts).tolist()) == TRAIN_LABELS + TEST_LABELS
    np.testing.assert_array_equal(a.meta_test.label_ids, b.meta_test.label_ids)
    np.testing.assert_array_equal(no_val.meta_train.label_ids, np.concatenate(parts[:2]))
    np.testing.assert_array_equal(no_val.meta_test.label_ids, a.meta_test.label_ids)
    others = {tuple(load_omniglot_classes("paper", split_seed=s, **kwargs).meta_test.label_ids) for s in range(2, 6)}
    assert len(others | {tuple(a.meta_test.label_ids)}) > 1, "the split depends on split_seed"
    with pytest.raises(ValueError, match="num_train"):
        load_omniglot_classes("paper", **{**kwargs, "num_train": 12})


def test_second_load_comes_from_cache_without_tfds(mocked):
    first = load_omniglot_classes("tfds", data_dir=mocked / "tfds", download=True, cache_dir=mocked / "cache")
    # Outside the mock, with a data_dir holding nothing: only the cache can answer.
    second = load_omniglot_classes("tfds", data_dir=mocked / "nothing", download=False, cache_dir=mocked / "cache")
    np.testing.assert_array_equal(first.meta_train.images.numpy(), second.meta_train.images.numpy())
    np.testing.assert_array_equal(first.meta_test.label_ids, second.meta_test.label_ids)


def test_episodes_from_mocked_split(mocked, check_episodes):
    classes = load_omniglot_classes("tfds", data_dir=mocked / "tfds", download=True, cache=False)
    episodes = list(omniglot_episodes(classes.meta_test, 5, 1, 2, 3, seed=0).take(4))
    assert episodes[0][0].shape == (3, 5, 28, 28, 1) and episodes[0][2].shape == (3, 10, 28, 28, 1)
    seen = check_episodes(classes.meta_test.images.numpy(), episodes, 5, 1, 2)
    assert {k for _, k in seen} == {0, 1, 2, 3}, "rotations are classes of their own"
    again = list(omniglot_episodes(classes.meta_test, 5, 1, 2, 3, seed=0).take(4))
    for a, b in zip(episodes, again):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match=r"17-way .* only 16 classes"):
        omniglot_episodes(classes.meta_test, 17, 1, 1, 1, seed=0)


def test_absent_data_offline_says_where_and_how(tmp_path):
    with pytest.raises(OmniglotNotFoundError) as err:
        load_omniglot_classes(data_dir=tmp_path / "empty", download=False, cache=False)
    message = str(err.value)
    for needle in (str(tmp_path / "empty"), "data_dir", "TF_MAML_DATA_DIR", "manual_dir", "images_evaluation.zip"):
        assert needle in message


def test_env_var_is_the_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_MAML_DATA_DIR", str(tmp_path / "from_env"))
    with pytest.raises(OmniglotNotFoundError, match="from_env"):
        load_omniglot_classes(download=False, cache=False)


def test_absent_data_without_network_fails_fast(tmp_path, monkeypatch):
    """download=True with no connection: TFDS would retry for minutes; the loader says so at once."""
    import socket
    import time

    import tensorflow_datasets as tfds

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda *a, **k: pytest.fail("TFDS download attempted without a network"))
    start = time.monotonic()
    with pytest.raises(OmniglotNotFoundError, match="no connection to storage.googleapis.com or github.com"):
        load_omniglot_classes(data_dir=tmp_path / "empty", download=True, cache=False)
    assert time.monotonic() - start < 60
