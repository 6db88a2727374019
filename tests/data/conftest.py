"""Fixtures for the data tests: where the real Omniglot lives, and one shared preprocessed load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def omniglot_tfds_dir() -> Path:
    """``$TF_MAML_DATA_DIR`` or the repo's ``../shared/data/tensorflow_datasets``."""
    return Path(os.environ.get("TF_MAML_DATA_DIR") or REPO.parent / "shared" / "data" / "tensorflow_datasets")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = omniglot_tfds_dir()
    if not (path / "omniglot" / "3.0.0" / "dataset_info.json").exists():
        pytest.skip(f"real Omniglot not found at {path} (set TF_MAML_DATA_DIR to a dir holding omniglot/3.0.0)")
    return path


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory) -> Path:
    """A per-session cache unless ``$TF_MAML_CACHE_DIR`` points at a persistent one (faster reruns)."""
    return Path(os.environ.get("TF_MAML_CACHE_DIR") or tmp_path_factory.mktemp("tf_maml_cache"))


@pytest.fixture(scope="session")
def paper_classes(real_data_dir, real_cache_dir):
    from tf_maml.data.omniglot import load_omniglot_classes

    return load_omniglot_classes("paper", data_dir=real_data_dir, download=False, cache_dir=real_cache_dir, validation=True)


@pytest.fixture(scope="session")
def tfds_classes(real_data_dir, real_cache_dir, paper_classes):  # after paper_classes: reuses its cache
    from tf_maml.data.omniglot import load_omniglot_classes

    return load_omniglot_classes("tfds", data_dir=real_data_dir, download=False, cache_dir=real_cache_dir)
