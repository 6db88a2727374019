"""Omniglot for few-shot learning, preprocessed as in MAML (Finn et al. 2017).

Images come from TFDS's ``omniglot`` builder and are reduced to 28×28 single-channel float32 with
ink = 1 (the originals are black ink on white). Each character has 20 drawings, so a split is a dense
``[characters, 20, 28, 28, 1]`` tensor; rotations by 0/90/180/270° form new classes (×4) and are
applied lazily by the episode sampler (see :func:`tf_maml.data.episodes.episode_dataset`).

Class splits:

* ``"paper"``: all 1623 characters (TFDS ``train`` + ``test``) shuffled with a fixed seed; the first
  1200 are meta-training (the last ``num_val`` of those are meta-validation when asked), the other
  423 meta-test — the split of the MAML reference code, irrespective of alphabet.
* ``"tfds"``: TFDS ``train`` (background alphabets) for meta-training, ``test`` (evaluation
  alphabets) for meta-test.

Preprocessing all 32,460 images takes tens of seconds, so the result (uint8, so that a cached and a
fresh load are bit-identical) is cached as an ``.npz``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_maml.data.episodes import episode_dataset

IMAGE_SIZE = 28
EXAMPLES_PER_CLASS = 20
ARCHIVES = (
    "images_background.zip",
    "images_evaluation.zip",
    "images_background_small1.zip",
    "images_background_small2.zip",
)
_CACHE_FORMAT = 1


class OmniglotNotFoundError(FileNotFoundError):
    """The prepared TFDS Omniglot dataset is not where we looked and could not be built."""


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """One meta-split: the character tensor and where its classes come from.

    ``images`` is ``[characters, 20, 28, 28, 1]`` float32 (ink = 1); ``label_ids`` are the TFDS
    ``label`` ids of the characters (stable across machines, so shipped models can list their
    meta-test classes). With ``rotations=4`` the split has ``4 * characters`` classes: class
    ``r * characters + c`` is character ``c`` rotated by ``r`` quarter turns counter-clockwise.
    """

    images: tf.Tensor
    label_ids: np.ndarray
    rotations: int = 4

    @property
    def num_characters(self) -> int:
        return int(self.label_ids.shape[0])

    @property
    def num_classes(self) -> int:
        return self.num_characters * self.rotations

    def class_ids(self) -> np.ndarray:
        """``[num_classes, 2]`` int64 of ``(tfds_label_id, quarter_turns)``, in episode class-id order."""
        turns = np.repeat(np.arange(self.rotations), self.num_characters)
        return np.stack([np.tile(self.label_ids, self.rotations), turns], axis=1).astype(np.int64)

    def class_images(self, class_id: int) -> tf.Tensor:
        """The ``[20, 28, 28, 1]`` images of one (possibly rotated) class, as the sampler sees them."""
        turns, character = divmod(int(class_id), self.num_characters)
        return tf.image.rot90(self.images[character], turns)


@dataclasses.dataclass(frozen=True)
class OmniglotClasses:
    """Meta-train / meta-val / meta-test class splits (``meta_val`` is None unless requested)."""

    meta_train: ClassSplit
    meta_val: ClassSplit | None
    meta_test: ClassSplit
    split: str


def default_data_dir() -> str | None:
    """``$TF_MAML_DATA_DIR`` if set, else None (TFDS's own default, ``~/tensorflow_datasets``)."""
    return os.environ.get("TF_MAML_DATA_DIR") or None


def default_cache_dir() -> Path:
    """``$TF_MAML_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tf_maml`` (``~/.cache/tf_maml``)."""
    if os.environ.get("TF_MAML_CACHE_DIR"):
        return Path(os.environ["TF_MAML_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tf_maml"


def _not_found_message(looked_in: str, cause: str) -> str:
    archives = ", ".join(ARCHIVES)
    return (
        f"Omniglot (TFDS 'omniglot') is not prepared in {looked_in} and could not be obtained ({cause}).\n"
        "To use an existing copy, pass data_dir=<dir containing omniglot/3.0.0> to "
        "load_omniglot_classes or set the TF_MAML_DATA_DIR environment variable to that dir.\n"
        "To download it, call with download=True on a machine with internet access.\n"
        f"To build it offline from the four official archives ({archives}, from "
        "https://github.com/brendenlake/omniglot/tree/master/python), put them in one folder and pass "
        "manual_dir=<that folder> (TFDS's manual-download mechanism: "
        "tfds.builder('omniglot', data_dir=D).download_and_prepare(download_config="
        "tfds.download.DownloadConfig(manual_dir=<folder>))). TFDS checks the archives against the "
        "official checksums, so re-encoded copies are refused with NonMatchingChecksumError."
    )


DOWNLOAD_HOSTS = ("storage.googleapis.com", "github.com")  # TFDS's prepared copies, then the archives


def _network_reachable(hosts: tuple[str, ...], timeout: float = 5.0) -> bool:
    """Whether any host answers on 443; behind a proxy (``HTTPS_PROXY``) direct connections may be blocked
    while downloads work, so that case is left to TFDS."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    for host in hosts:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def _prepared_builder(data_dir: str | None, download: bool, manual_dir: str | os.PathLike | None):
    """A TFDS omniglot builder whose data is prepared, or an :class:`OmniglotNotFoundError`."""
    import tensorflow_datasets as tfds  # heavy import, only when data is actually loaded

    builder = tfds.builder("omniglot", data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not download and manual_dir is None:
        raise OmniglotNotFoundError(_not_found_message(str(builder.data_dir), "download=False"))
    if manual_dir is None and not _network_reachable(DOWNLOAD_HOSTS):
        # TFDS would retry for minutes before giving up; say so now.
        raise OmniglotNotFoundError(_not_found_message(
            str(builder.data_dir), f"download=True but no connection to {' or '.join(DOWNLOAD_HOSTS)}"))
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir),
        try_download_gcs=manual_dir is None,
    )
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as err:  # network, checksum or archive errors: all mean "not available here"
        raise OmniglotNotFoundError(
            _not_found_message(str(builder.data_dir), f"{type(err).__name__}: {err}")
        ) from err
    return builder


def _preprocess(image: tf.Tensor) -> tf.Tensor:
    """105×105×3 uint8 black-on-white -> 28×28 uint8 ink map (255 = full ink), as a quantised float."""
    ink = 1.0 - tf.cast(image[..., :1], tf.float32) / 255.0
    small = tf.image.resize(ink, (IMAGE_SIZE, IMAGE_SIZE), method="lanczos3", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 1.0) * 255.0), tf.uint8)[..., 0]


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All examples of a TFDS split as ``(images [n, 28, 28] uint8, labels [n], alphabets [n])``."""
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(
        lambda ex: (_preprocess(ex["image"]), ex["label"], ex["alphabet"]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).batch(2048)
    parts = [tuple(t.numpy() for t in batch) for batch in ds]
    if not parts:
        return np.zeros([0, IMAGE_SIZE, IMAGE_SIZE], np.uint8), np.zeros([0], np.int64), np.zeros([0], np.int64)
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def _group_by_class(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Examples -> ``([classes, 20, 28, 28] uint8, label_ids [classes])``, classes sorted by label id."""
    order = np.argsort(labels, kind="stable")
    ids, counts = np.unique(labels, return_counts=True)
    if not np.all(counts == EXAMPLES_PER_CLASS):
        bad = ids[counts != EXAMPLES_PER_CLASS][:5]
        raise ValueError(
            f"Omniglot characters must have {EXAMPLES_PER_CLASS} drawings each; label ids {bad.tolist()} "
            f"have {counts[counts != EXAMPLES_PER_CLASS][:5].tolist()}. Is the TFDS data complete?"
        )
    return images[order].reshape(len(ids), EXAMPLES_PER_CLASS, IMAGE_SIZE, IMAGE_SIZE), ids


def _load_arrays(data_dir: str | None, download: bool, manual_dir, cache_path: Path | None) -> dict:
    """Preprocessed characters of both TFDS splits, from the cache when it is there."""
    if cache_path is not None and cache_path.exists():
        with np.load(cache_path) as cached:
            if int(cached["format"]) == _CACHE_FORMAT:
                return {k: cached[k] for k in cached.files}
    builder = _prepared_builder(data_dir, download, manual_dir)
    arrays: dict = {"format": np.int64(_CACHE_FORMAT)}
    for split in ("train", "test"):
        images, labels, alphabets = _read_split(builder, split)
        arrays[f"{split}_images"], arrays[f"{split}_ids"] = _group_by_class(images, labels)
        alphabet_of = dict(zip(labels.tolist(), alphabets.tolist()))
        arrays[f"{split}_alphabets"] = np.array([alphabet_of[i] for i in arrays[f"{split}_ids"]], np.int64)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, cache_path)  # atomic: concurrent loaders never see a partial file
    return arrays


def _make_split(images_u8: np.ndarray, ids: np.ndarray, rotations: int) -> ClassSplit:
    images = tf.constant(images_u8[..., np.newaxis].astype(np.float32) / 255.0)
    return ClassSplit(images=images, label_ids=ids.astype(np.int64), rotations=rotations)


def load_omniglot_classes(
    split: str = "paper",
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    *,
    validation: bool = False,
    num_train: int = 1200,
    num_val: int = 100,
    rotations: int = 4,
    split_seed: int = 1,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    manual_dir: str | os.PathLike | None = None,
) -> OmniglotClasses:
    """Load Omniglot as meta-train / (meta-val) / meta-test class tensors.

    ``data_dir`` defaults to ``$TF_MAML_DATA_DIR`` and then to TFDS's default; ``download=None``
    means True (TFDS's usual download-and-prepare when the data is missing). ``validation=True``
    carves the last ``num_val`` meta-training characters (after the fixed-seed shuffle) out as
    meta-validation. ``rotations`` (1 or 4) is applied to every split, as in the MAML reference code.
    Raises :class:`OmniglotNotFoundError` (saying where it looked and how to fix it) if the data is
    neither there nor obtainable.

    The preprocessed characters are cached (``cache_dir``, default under ``~/.cache``) and read from there
    on later calls whatever ``data_dir``/``download``/``manual_dir`` say: TFDS omniglot 3.0.0 is
    checksummed, so every source gives the same arrays. ``cache=False`` reads the TFDS data every time.
    """
    if split not in ("paper", "tfds"):
        raise ValueError(f"split must be 'paper' or 'tfds', got {split!r}.")
    if rotations not in (1, 4):
        raise ValueError(f"rotations must be 1 or 4, got {rotations}.")
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    download = True if download is None else bool(download)
    cache_path = None
    if cache:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_path = root / f"omniglot-3.0.0-{IMAGE_SIZE}px-v{_CACHE_FORMAT}.npz"
    arrays = _load_arrays(data_dir, download, manual_dir, cache_path)

    images = np.concatenate([arrays["train_images"], arrays["test_images"]])
    ids = np.concatenate([arrays["train_ids"], arrays["test_ids"]])
    n_bg = len(arrays["train_ids"])
    rng = np.random.RandomState(split_seed)
    if split == "paper":
        if not 0 < num_train < len(ids):
            raise ValueError(f"num_train must be in 1..{len(ids) - 1} (there are {len(ids)} characters), got {num_train}.")
        order = np.argsort(ids, kind="stable")[rng.permutation(len(ids))]  # shuffle of the sorted ids
        train_idx, test_idx = order[:num_train], order[num_train:]
    else:
        train_idx, test_idx = rng.permutation(n_bg), np.arange(n_bg, len(ids))
    val_idx = None
    if validation:
        if not 0 < num_val < len(train_idx):
            raise ValueError(f"num_val must be in 1..{len(train_idx) - 1} for {len(train_idx)} meta-training characters, got {num_val}.")
        train_idx, val_idx = train_idx[:-num_val], train_idx[-num_val:]
    return OmniglotClasses(
        meta_train=_make_split(images[train_idx], ids[train_idx], rotations),
        meta_val=None if val_idx is None else _make_split(images[val_idx], ids[val_idx], rotations),
        meta_test=_make_split(images[test_idx], ids[test_idx], rotations),
        split=split,
    )


def omniglot_episodes(
    split_classes: ClassSplit,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int | None,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
) -> tf.data.Dataset:
    """N-way K-shot episodes over one Omniglot split (rotated classes included); see ``episode_dataset``."""
    return episode_dataset(
        split_classes.images, ways, shots, queries, meta_batch, seed,
        start_step=start_step, num_steps=num_steps, rotations=split_classes.rotations,
    )
