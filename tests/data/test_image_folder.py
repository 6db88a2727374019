"""Episodes from a folder of class folders, on a tiny generated set of PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tf_maml.data.image_folder import image_folder_episodes, list_image_folder

COUNTS = {"n01": 4, "n02": 5, "n03": 4, "n04": 6, "n05": 4, "n06": 4}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class c, example e is a flat 10×12 RGB image of value 40·c + 5·e + 1 in all channels."""
    root = tmp_path_factory.mktemp("images")
    for c, (name, n) in enumerate(COUNTS.items()):
        (root / name).mkdir()
        for e in range(n):
            Image.fromarray(np.full((10, 12, 3), 40 * c + 5 * e + 1, np.uint8)).save(root / name / f"{e:03d}.png")
    (root / "empty_class").mkdir()
    (root / "n01" / "notes.txt").write_text("not an image")
    return root


def identify(image: np.ndarray) -> tuple[int, int]:
    value = int(round(float(image.mean()) * 255)) - 1
    return value // 40, (value % 40) // 5


def test_listing_is_sorted_and_skips_non_images(folder):
    names, files = list_image_folder(folder)
    assert names == list(COUNTS)
    assert [len(f) for f in files] == list(COUNTS.values())


def test_episode_semantics(folder):
    ways, shots, queries = 3, 1, 3
    ds = image_folder_episodes(folder, ways, shots, queries, meta_batch=4, seed=0, image_size=(8, 8))
    batches = [tuple(t.numpy() for t in el) for el in ds.take(2)]
    for sx, sy, qx, qy in batches:
        assert sx.shape == (4, 3, 8, 8, 3) and qx.shape == (4, 9, 8, 8, 3)
        assert 0.0 <= sx.min() and sx.max() <= 1.0
        for t in range(4):
            ids = [identify(x) for x in np.concatenate([sx[t], qx[t]])]
            labels = np.concatenate([sy[t], qy[t]])
            assert len(set(ids)) == len(ids), "support and query disjoint"
            classes = [{c for (c, _), l in zip(ids, labels) if l == y} for y in range(ways)]
            assert all(len(s) == 1 for s in classes) and len(set.union(*classes)) == ways
    resumed = next(iter(image_folder_episodes(folder, ways, shots, queries, 4, seed=0, start_step=1, image_size=(8, 8))))
    np.testing.assert_array_equal(resumed[2].numpy(), batches[1][2])


def test_errors(folder, tmp_path):
    with pytest.raises(ValueError, match=r"7-way .* only 6 classes"):
        image_folder_episodes(folder, 7, 1, 1, 1, seed=0)
    with pytest.raises(ValueError, match=r"only 4 examples"):
        image_folder_episodes(folder, 2, 2, 3, 1, seed=0)
    with pytest.raises(FileNotFoundError, match="class folders"):
        image_folder_episodes(tmp_path, 2, 1, 1, 1, seed=0)


def test_the_miniimagenet_network_meta_learns_on_folder_episodes(folder):
    """The loader and the paper's MiniImagenet network together (84×84 RGB), as a user with MiniImagenet on
    disk would run them: MAML's meta-steps lower the post-adaptation loss on episodes it has not seen."""
    import keras

    from tf_maml import MAML
    from tf_maml.models.convnets import miniimagenet_convnet

    maml = MAML(miniimagenet_convnet(2), inner_lr=0.5, inner_steps=1, task_execution="map")
    maml.compile(optimizer=keras.optimizers.Adam(1e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    held_out = image_folder_episodes(folder, 2, 1, 2, meta_batch=8, seed=1, num_steps=2).cache()
    before = maml.evaluate(held_out, verbose=0, return_dict=True)
    history = maml.fit(image_folder_episodes(folder, 2, 1, 2, meta_batch=4, seed=0), steps_per_epoch=15,
                       epochs=1, verbose=0)
    after = maml.evaluate(held_out, verbose=0, return_dict=True)
    assert np.isfinite(history.history["loss"]).all()
    assert after["loss"] < 0.8 * before["loss"] and after["accuracy"] > before["accuracy"], (before, after)
