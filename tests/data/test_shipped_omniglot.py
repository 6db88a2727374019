"""The shipped Omniglot meta-learners adapt at serving time to characters they never saw."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tf_maml.data.omniglot import omniglot_episodes
from tf_maml.serving import read_metadata, resolve_version_dir

SAVED = pathlib.Path(__file__).resolve().parents[2] / "saved_models"


@pytest.mark.parametrize("name,ways,floor", [("omniglot_5way1shot", 5, 0.9), ("omniglot_20way1shot", 20, 0.75)])
def test_served_adapt_and_predict_on_meta_test_characters(paper_classes, name, ways, floor):
    if not (SAVED / name).exists():
        pytest.skip(f"{name} is not shipped")
    version = resolve_version_dir(str(SAVED / name))
    meta = read_metadata(version)
    assert meta["meta_test_tfds_label_ids"] == sorted(int(i) for i in paper_classes.meta_test.label_ids)
    assert meta["num_classes"] == ways and meta["training"]["meta_steps"] > 0
    served = tf.saved_model.load(version).signatures["adapt_and_predict"]
    episodes = omniglot_episodes(paper_classes.meta_test, ways, 1, 1, meta_batch=None, seed=2024)
    correct = []
    for sx, sy, qx, qy in episodes.take(20):
        logits = served(support_x=sx, support_y=tf.cast(sy, tf.int32), query_x=qx)["predictions"]
        correct.append(np.mean(np.argmax(logits, -1) == qy.numpy()))
    assert np.mean(correct) > floor, np.mean(correct)
