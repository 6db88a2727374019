"""An interrupted run that resumes ends exactly where an uninterrupted one does."""

import keras
import numpy as np
import pytest

from tf_maml import MAML
from tf_maml.data.sinusoid import sinusoid_episodes
from tf_maml.models.mlp import sinusoid_mlp
from tf_maml.training import fit_resumable, read_budget


def fresh():
    keras.utils.set_random_seed(0)
    maml = MAML(sinusoid_mlp(seed=0), inner_lr=0.01, learn_inner_lr=True)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return maml


def make_dataset(start):
    return sinusoid_episodes(5, 10, seed=7, start_step=start)


def test_resume_is_exact(tmp_path):
    straight = fresh()
    fit_resumable(straight, make_dataset, 40, 10, str(tmp_path / "a"), verbose=0)

    first = fresh()
    fit_resumable(first, make_dataset, 20, 10, str(tmp_path / "b"), verbose=0)  # "interrupted" at step 20
    budget = read_budget(str(tmp_path / "b" / "budget.json"))
    assert budget["meta_steps"] == 20 and budget["sessions"] == 1 and budget["wall_seconds"] > 0
    resumed = fresh()
    history = fit_resumable(resumed, make_dataset, 40, 10, str(tmp_path / "b"), verbose=0)
    assert history.epoch == [2, 3]
    assert int(resumed.optimizer.iterations) == 40
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert (tmp_path / "b" / "logs").exists()
    resumed_budget = read_budget(str(tmp_path / "b" / "budget.json"))  # summed over both sessions
    assert resumed_budget["meta_steps"] == 40 and resumed_budget["sessions"] == 2
    assert resumed_budget["wall_seconds"] > budget["wall_seconds"]
    assert fit_resumable(resumed, make_dataset, 40, 10, str(tmp_path / "b"), verbose=0) is None


def test_resume_with_other_epoch_length_says_how_to_fix(tmp_path):
    fit_resumable(fresh(), make_dataset, 10, 10, str(tmp_path), verbose=0)
    with pytest.raises(ValueError, match=r"meta-step 10, not a multiple of steps_per_epoch \(4\).*config.json"):
        fit_resumable(fresh(), make_dataset, 40, 4, str(tmp_path), verbose=0)
    assert read_budget(str(tmp_path / "budget.json"))["meta_steps"] == 10  # nothing already saved is lost
