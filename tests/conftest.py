import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from a clean Keras graph state and a fixed seed."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield


def _central_differences(loss, variables, eps: float = 1e-6) -> list:
    """d loss() / d v for every variable by central differences; ``loss()`` must read the variables."""
    grads = []
    for var in variables:
        base = var.numpy().copy()
        grad = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            for sign in (1, -1):
                shifted = base.copy()
                shifted[idx] += sign * eps
                var.assign(shifted)
                grad[idx] += sign * float(loss()) / (2 * eps)
        var.assign(base)
        grads.append(grad)
    return grads


@pytest.fixture
def central_differences():
    """The finite-difference gradient that analytic (meta-)gradients are checked against."""
    return _central_differences
