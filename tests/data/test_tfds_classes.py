"""Episodes from any TFDS image-classification dataset (here MNIST's builder over mocked examples)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_maml.data import TFDSNotAvailableError, episode_dataset, load_tfds_classes

COUNTS = {0: 7, 3: 5, 4: 9, 6: 6, 8: 5, 9: 8}  # unequal class sizes: a ragged class tensor


def fake_mnist(self, split, decoders=None, read_config=None, **kwargs):
    """Each image carries its (label, example) as two lit pixels; examples interleaved as in shards."""
    examples = [(label, e) for e in range(max(COUNTS.values())) for label in COUNTS if e < COUNTS[label]]
    images = np.zeros([len(examples), 28, 28, 1], np.uint8)
    for i, (label, e) in enumerate(examples):
        images[i, label, 2] = 255
        images[i, 20, e + 3] = 128
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.array([l for l, _ in examples])})


@pytest.fixture
def mocked(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=fake_mnist):
        yield tmp_path


def test_classes_grouped_and_episodes_valid(mocked, check_episodes):
    classes = load_tfds_classes("mnist", "train", data_dir=mocked)
    assert classes.label_ids.tolist() == sorted(COUNTS)
    assert classes.label_names == [str(i) for i in sorted(COUNTS)]
    assert isinstance(classes.images, tf.RaggedTensor)
    assert classes.images.row_lengths().numpy().tolist() == [COUNTS[c] for c in sorted(COUNTS)]
    per_class = [x.numpy() for x in classes.images]
    for label, xs in zip(classes.label_ids, per_class):
        assert np.all(xs[:, label, 2, 0] == 1.0) and xs.dtype == np.float32  # ink 255 -> 1.0, grouped right
    episodes = list(episode_dataset(classes.images, 4, 2, 3, 5, seed=3).take(3))
    assert episodes[0][0].shape == (5, 8, 28, 28, 1)
    seen = check_episodes(per_class, episodes, 4, 2, 3)
    assert len({c for c, _ in seen}) == len(COUNTS)
    again = list(episode_dataset(classes.images, 4, 2, 3, 5, seed=3).take(3))
    np.testing.assert_array_equal(episodes[2][0], again[2][0])


def test_resize_and_preprocess(mocked):
    classes = load_tfds_classes("mnist", data_dir=mocked, image_size=(14, 14), preprocess=lambda x: 1.0 - x)
    assert classes.images.shape[2:] == (14, 14, 1)
    assert float(tf.reduce_max(classes.images.flat_values)) == 1.0  # inverted background


def test_bad_keys_and_too_many_ways_are_clear(mocked):
    with pytest.raises(ValueError, match=r"image_key='img' is not a feature of 'mnist'; its features are \['image', 'label'\]"):
        load_tfds_classes("mnist", data_dir=mocked, image_key="img")
    classes = load_tfds_classes("mnist", data_dir=mocked)
    with pytest.raises(ValueError, match=r"7-way .* only 6 classes"):
        episode_dataset(classes.images, 7, 1, 1, 1, seed=0)


def test_absent_dataset_offline_says_where(tmp_path):
    with pytest.raises(TFDSNotAvailableError, match=r"'mnist' is not prepared in .*download=False.*data_dir="):
        load_tfds_classes("mnist", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match="no dataset named 'no_such_dataset'"):
        load_tfds_classes("no_such_dataset", data_dir=tmp_path, download=False)


def test_unlabelled_examples_and_mixed_shapes_are_clear():
    def unlabelled(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices({"image": np.zeros([4, 28, 28, 1], np.uint8),
                                                   "label": np.array([0, 1, -1, -1])})

    def mixed_sizes(self, split, **kwargs):
        sizes = [28, 28, 20]
        return tf.data.Dataset.from_generator(
            lambda: ({"image": np.zeros([s, s, 1], np.uint8), "label": i % 2} for i, s in enumerate(sizes)),
            output_signature={"image": tf.TensorSpec([None, None, 1], tf.uint8), "label": tf.TensorSpec([], tf.int64)})

    with tfds.testing.mock_data(as_dataset_fn=unlabelled):
        with pytest.raises(ValueError, match=r"2 unlabelled examples \(label -1\); use a labelled split"):
            load_tfds_classes("mnist", "test")
    with tfds.testing.mock_data(as_dataset_fn=mixed_sizes):
        with pytest.raises(ValueError, match=r"differ in shape: pass image_size"):
            load_tfds_classes("mnist")
        assert load_tfds_classes("mnist", image_size=(16, 16)).images.flat_values.shape[1:] == (16, 16, 1)
