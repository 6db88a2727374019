"""The episode image a run logs lands on the x-axis of Keras' epoch scalars, also when a run resumes."""

import numpy as np

from tf_maml.callbacks import EpisodeImages
from tf_maml.event_logs import decode_image, read_events


class _ResumedAt:
    def __init__(self, meta_steps: int) -> None:
        self.steps = meta_steps

    def meta_steps_done(self) -> int:
        return self.steps


def test_episode_image_is_logged_at_the_epoch_training_starts(tmp_path):
    rng = np.random.default_rng(0)
    # One task of a batch of two: 2-way, 2 shots, 1 query, 4x4 images whose pixels identify them.
    support_x = rng.uniform(size=(2, 4, 4, 4, 1)).astype(np.float32)
    support_y = np.array([[1, 0, 1, 0]] * 2)
    query_x = rng.uniform(size=(2, 2, 4, 4, 1)).astype(np.float32)
    query_y = np.array([[0, 1]] * 2)
    callback = EpisodeImages(str(tmp_path), (support_x, support_y, query_x, query_y))
    callback.set_model(_ResumedAt(600))
    callback.set_params({"steps": 200, "epochs": 10})
    callback.on_train_begin()

    images = read_events(str(tmp_path / "train"))["episode"]
    assert list(images) == [3]  # meta-step 600 begins epoch 3 (0-based), where Keras logs that epoch
    grid = decode_image(images[3]).astype(np.float32) / 255
    assert grid.shape == (2 * 4, 4 * 4, 1)  # a row per class: 2 shots, a gap, the query
    # Row of class 0: its support images (tasks' positions 1 and 3), then the gap, then its query (position 0).
    np.testing.assert_allclose(grid[:4, :4], support_x[0, 1], atol=1 / 255)
    np.testing.assert_allclose(grid[:4, 4:8], support_x[0, 3], atol=1 / 255)
    np.testing.assert_allclose(grid[:4, 8:12], 0.5, atol=1 / 255)
    np.testing.assert_allclose(grid[4:, 12:], query_x[0, 1], atol=1 / 255)
