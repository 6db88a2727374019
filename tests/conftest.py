import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("TF_MAML_SHARED", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from a clean Keras graph state and a fixed seed."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
