"""Fixtures for the data tests: where the real Omniglot lives, and one shared preprocessed load."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def _check_episodes(per_class, episodes, ways: int, shots: int, queries: int) -> set[tuple[int, int]]:
    """Assert the episode invariants on images that identify themselves; return the (class, quarter turns) seen.

    ``per_class[c]`` holds the examples of class ``c``. Every label 0..N-1 must hold K support and Q query
    examples of one (class, rotation), all different examples, and the N labels N different classes.
    """
    table = {
        np.ascontiguousarray(np.rot90(x, k)).tobytes(): (c, e, k)
        for c, xs in enumerate(per_class) for e, x in enumerate(np.asarray(xs)) for k in range(4)
    }
    assert len(table) == 4 * sum(len(xs) for xs in per_class), "test images must all differ"
    seen = set()
    for sx, sy, qx, qy in episodes:
        sx, sy, qx, qy = (np.asarray(t) for t in (sx, sy, qx, qy))
        if sy.ndim == 1:  # unbatched
            sx, sy, qx, qy = sx[None], sy[None], qx[None], qy[None]
        for t in range(len(sy)):
            assert sorted(set(sy[t].tolist())) == list(range(ways)) and sorted(set(qy[t].tolist())) == list(range(ways))
            decoded = [table[np.ascontiguousarray(x).tobytes()] for x in np.concatenate([sx[t], qx[t]])]
            labels = np.concatenate([sy[t], qy[t]])
            classes = []
            for label in range(ways):
                members = [decoded[j] for j in np.flatnonzero(labels == label)]
                assert len(members) == shots + queries
                assert len({(c, k) for c, _, k in members}) == 1, "one (class, rotation) per label"
                assert len({e for _, e, _ in members}) == shots + queries, "support and query examples disjoint"
                classes.append((members[0][0], members[0][2]))
            assert len(set(classes)) == ways, "N distinct classes"
            seen.update(classes)
    return seen


@pytest.fixture
def check_episodes():
    return _check_episodes
