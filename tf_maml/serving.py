"""Export to TensorFlow Serving: ``<base_dir>/<name>/<version>/`` SavedModels, and back to a ``MAML``.

Two kinds of export:

* :func:`export_model` — an ordinary (e.g. task-adapted, from ``MAML.adapt``) Keras model:
  ``serving_default``: ``inputs [B, ...] → predictions [B, ...]``.
* :func:`export_meta_learner` — the meta-learner θ with the inner loop compiled into the graph:
  ``serving_default`` (θ, no adaptation) and ``adapt_and_predict``: ``support_x [K, ...]``,
  ``support_y [K, ...]``, ``query_x [M, ...]`` of ONE task → ``predictions [M, ...]``. The inner loop is
  ``MAML.adapted_predictions`` itself (same rates, incl. learned Meta-SGD rates, adapted layers and batch-norm
  mode), traced once at export with a fixed number of steps, so a served model adapts exactly as
  ``MAML.adapt`` does.

Every export carries ``assets/tf_maml.json`` (what the model is and how it was made); a meta-learner
export also carries ``assets/meta_learner.keras`` so :func:`load` can restore a trainable ``MAML``.

Versions are integers as TF Serving expects, never overwritten (the next number is used). A version is
written to a hidden ``.tmp-*`` directory beside it (TF Serving ignores non-integer names) and renamed
into place only when complete, so a failed export leaves no half-written version.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tf_maml import inner_loop
from tf_maml.maml import MAML, has_batch_norm

METADATA_ASSET = "tf_maml.json"
KERAS_ASSET = "meta_learner.keras"
METADATA_FORMAT = "tf_maml.serving/1"
INPUTS, PREDICTIONS = "inputs", "predictions"
SUPPORT_X, SUPPORT_Y, QUERY_X = "support_x", "support_y", "query_x"


# ------------------------------------------------------------------------------------ versions
def next_version(model_dir: str) -> int:
    """1 + the largest integer version directory under ``model_dir`` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def resolve_version_dir(path: str) -> str:
    """``path`` itself if it is a SavedModel, else its highest integer version subdirectory."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No exported model at {path!r}.")
    versions = sorted((int(d) for d in os.listdir(path) if re.fullmatch(r"\d+", d)), reverse=True)
    for v in versions:
        candidate = os.path.join(path, str(v))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise FileNotFoundError(
        f"{path!r} is neither a SavedModel directory nor a model directory holding integer versions "
        "(<name>/<version>/saved_model.pb)."
    )


def write_version(base_dir: str, name: str, write: Callable[[str], None]) -> str:
    """Run ``write(tmp_dir)`` and rename ``tmp_dir`` to the next free version; on failure remove it."""
    if not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"name must be a plain directory name, got {name!r}.")
    model_dir = os.path.join(os.fspath(base_dir), name)
    created = not os.path.isdir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    tmp = os.path.join(model_dir, f".tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        for _ in range(100):  # another writer may take a number between our scan and the rename
            path = os.path.join(model_dir, str(next_version(model_dir)))
            try:
                os.rename(tmp, path)  # atomic; fails if `path` exists and is not empty
                return path
            except OSError:
                if not os.path.exists(path):
                    raise
        raise RuntimeError(f"Could not find a free version number under {model_dir}.")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and os.path.isdir(model_dir) and not os.listdir(model_dir):
            os.rmdir(model_dir)
        raise


# ------------------------------------------------------------------------------------ metadata
def source_path(path: str) -> str:
    """A provenance path for metadata: relative to the working directory when it lies inside it (so a
    shipped export names ``runs/...`` rather than a home directory of the training machine), else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, tf.Tensor, tf.Variable)) or hasattr(value, "numpy"):
        return np.asarray(value).tolist()
    if isinstance(value, (tf.TensorShape,)):
        return value.as_list()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable.")


def provenance() -> dict[str, str]:
    """What made an export and when: every export's metadata carries it, so a served model can be traced."""
    import tf_maml

    return {
        "tf_maml_version": tf_maml.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _model_metadata(model: keras.Model) -> dict[str, Any]:
    out_shape = list(model.output_shape[1:])
    return {
        "format": METADATA_FORMAT,
        **provenance(),
        "model_name": model.name,
        "input_shape": list(model.input_shape[1:]),
        "input_dtype": _input_spec(model).dtype.name,
        "output_shape": out_shape,
        "output_size": int(np.prod(out_shape)) if out_shape else 1,
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "batch_norm_layers": has_batch_norm(model),
    }


def _loss_name(maml: MAML) -> str:
    loss = maml.loss
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def _maml_metadata(maml: MAML, steps: int, support_y_spec: tf.TensorSpec) -> dict[str, Any]:
    loss = _loss_name(maml)
    classification = "crossentropy" in loss.lower() or "hinge" in loss.lower()
    meta = _model_metadata(maml.model)
    meta.update(
        {
            "task_family": "classification" if classification else "regression",
            "loss": loss,
            "inner_steps": steps,
            "inner_steps_meta_training": maml.inner_steps,
            "inner_lr": maml.inner_lr,
            "learn_inner_lr": maml.learn_inner_lr,
            "adapt_layers": maml.adapt_layers,
            "batch_norm": maml.batch_norm,
            "first_order_meta_training": maml.first_order,
            "first_order_until": maml.first_order_until,
            "multi_step_loss": maml.multi_step_loss,
            "per_step_batch_norm": maml.per_step_batch_norm,
            "support_y": {"shape": support_y_spec.shape.as_list(), "dtype": support_y_spec.dtype.name},
            "signatures": {
                "serving_default": f"{INPUTS} -> {PREDICTIONS} with the meta-learned θ (no adaptation)",
                "adapt_and_predict": f"{SUPPORT_X}, {SUPPORT_Y}, {QUERY_X} of one task -> {PREDICTIONS} "
                f"after {steps} inner step(s) on the support set",
            },
        }
    )
    if classification:
        meta["num_classes"] = meta["output_size"]
    if maml.learn_inner_lr:
        used = [r for r in maml.inner_rates() if r is not None]
        rates = np.concatenate([np.ravel(r) for r in used])
        meta["learned_inner_lr"] = {"mean": float(rates.mean()), "min": float(rates.min()), "max": float(rates.max())}
        if maml.learn_inner_lr == "per_step":
            per_step = np.stack(used)
            meta["learned_inner_lr"]["mean_per_step"] = [float(x) for x in per_step.mean(axis=0)]
    if getattr(maml, "optimizer", None) is not None:
        meta["meta_steps_trained"] = maml.meta_steps_done()
    return meta


def _write_metadata(directory: str, metadata: dict[str, Any]) -> str:
    path = os.path.join(directory, METADATA_ASSET)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, sort_keys=True, default=_jsonable)
    return path


def read_metadata(path: str) -> dict[str, Any]:
    """The ``tf_maml.json`` of an export (version dir, or ``<name>`` dir for its highest version)."""
    with open(os.path.join(resolve_version_dir(path), "assets", METADATA_ASSET), encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------ signatures
def _input_spec(model: keras.Model) -> tf.TensorSpec:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs or len(inputs) != 1:
        raise ValueError(f"Export needs a model with exactly one input; '{model.name}' has {len(inputs or [])}.")
    return tf.TensorSpec([None, *inputs[0].shape[1:]], tf.as_dtype(inputs[0].dtype))


def _output_dtype(model: keras.Model) -> tf.DType:
    return tf.as_dtype(model.outputs[0].dtype)


def infer_support_y_spec(maml: MAML) -> tf.TensorSpec:
    """Labels as the compiled loss expects them: sparse losses take ``[K]`` int32 class ids, any other
    loss a target shaped like the model's output."""
    loss = _loss_name(maml).lower()
    if "sparse" in loss:
        return tf.TensorSpec([None], tf.int32, name=SUPPORT_Y)
    return tf.TensorSpec([None, *maml.model.output_shape[1:]], _output_dtype(maml.model), name=SUPPORT_Y)


def _checked(tensor: tf.Tensor, spec: tf.TensorSpec) -> tf.Tensor:
    """Reject a wrong example shape with a message naming the input (the signature alone only fixes the
    dtype; a wrong shape would otherwise fail deep inside a layer)."""
    return tf.ensure_shape(tensor, spec.shape, name=f"check_{spec.name}")


def _predict_fn(model: keras.Model, params_fn: Callable[[], list], training: bool | None, spec: tf.TensorSpec):
    def predict(inputs):
        inputs = _checked(inputs, spec)
        pred, _, _ = inner_loop.functional_call(model, params_fn(), inputs, training)
        return {PREDICTIONS: pred}

    return predict


class _ExportModule(tf.Module):
    """What is saved: the variables the signatures read, the assets, and the signature functions.

    The Keras model is only traced, not saved as an object, so serving needs no tf_maml code.
    """

    def __init__(self, asset_paths: list[str]) -> None:
        super().__init__(name="tf_maml_export")
        self.assets = [tf.saved_model.Asset(p) for p in asset_paths]


def _save(module: _ExportModule, directory: str, signatures: dict[str, tf.types.experimental.ConcreteFunction]) -> None:
    """Save with the *tf.Variables the functions capture* tracked (as Keras' ExportArchive does): tracking
    the Keras variable wrappers instead adds a second copy of each variable to the TF1 graph, and
    ``saved_model_cli run`` (a TF1 session) then reads an uninitialised one."""
    seen: dict[int, tf.Variable] = {}
    for fn in signatures.values():
        for var in fn.variables:
            seen.setdefault(id(var), var)
    module.captured_variables = list(seen.values())
    tf.saved_model.save(module, directory, signatures=signatures)


# ------------------------------------------------------------------------------------ exports
def export_model(model: keras.Model, base_dir: str, name: str, metadata: dict[str, Any] | None = None) -> str:
    """Export an ordinary Keras model (e.g. from ``MAML.adapt``) as the next version; returns its path.

    ``serving_default``: ``inputs [B, ...]`` (the model's input dtype) → ``predictions [B, ...]``, what
    ``model(inputs)`` returns: layers run in inference mode unless the model fixes ``training`` itself
    (an adapted transductive-BN model keeps using batch statistics), and statelessly: serving never
    updates moving statistics.
    """
    if isinstance(model, MAML):
        raise TypeError("export_model exports an ordinary Keras model; for a MAML use export_meta_learner(maml, ...) "
                        "(θ plus in-graph adaptation) or export_adapted(maml, support_x, support_y, ...).")
    spec = _input_spec(model)
    meta = {**_model_metadata(model), "kind": "model",
            "signatures": {"serving_default": f"{INPUTS} -> {PREDICTIONS}"}, **(metadata or {})}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory(prefix="tf_maml_assets_") as staging:
            module = _ExportModule([_write_metadata(staging, meta)])
            params = lambda: [v.value for v in model.trainable_variables]  # noqa: E731
            in_spec = tf.TensorSpec(spec.shape, spec.dtype, name=INPUTS)
            # training=None, not False: Keras would force False onto every layer, overriding the
            # training=True that MAML.adapt bakes in for transductive batch norm.
            serve = tf.function(_predict_fn(model, params, None, in_spec), autograph=False, input_signature=[in_spec])
            module.serve = serve
            _save(module, tmp, {"serving_default": serve.get_concrete_function()})

    return write_version(base_dir, name, write)


def export_adapted(
    maml: MAML, support_x, support_y, base_dir: str, name: str, steps: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """``maml.adapt(support_x, support_y, steps)`` exported with :func:`export_model`; the adaptation
    settings go into the metadata."""
    steps = maml.eval_inner_steps if steps is None else int(steps)
    y_spec = infer_support_y_spec(maml)
    support_x = tf.cast(support_x, _input_spec(maml.model).dtype)
    support_y = tf.cast(support_y, y_spec.dtype)
    adapted = maml.adapt(support_x, support_y, steps=steps)
    meta = _maml_metadata(maml, steps, y_spec)
    meta.pop("signatures")
    meta.update({"adapted_on_support_examples": int(np.shape(support_x)[0]), **(metadata or {})})
    return export_model(adapted, base_dir, name, meta)


def export_meta_learner(
    maml: MAML,
    base_dir: str,
    name: str,
    metadata: dict[str, Any] | None = None,
    steps: int | None = None,
    support_y_spec: tf.TensorSpec | None = None,
) -> str:
    """Export θ with ``serving_default`` and ``adapt_and_predict`` (the inner loop in the graph).

    Args:
        maml: a compiled ``MAML`` (the loss defines the inner loop's objective).
        steps: inner steps baked into ``adapt_and_predict``; defaults to ``maml.eval_inner_steps``.
        support_y_spec: shape/dtype of ``support_y`` with a ``None`` example axis; inferred from the
            loss when omitted (sparse losses: ``[K]`` int32, otherwise shaped like the output).
    Returns the version directory written.
    """
    if not isinstance(maml, MAML):
        raise TypeError(f"export_meta_learner exports a tf_maml.MAML, got {type(maml).__name__}; use export_model.")
    if getattr(maml, "_compile_loss", None) is None:
        raise RuntimeError("Compile the MAML with its loss (maml.compile(loss=...)) before exporting: "
                           "the served inner loop minimises that loss.")
    steps = maml.eval_inner_steps if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    y_spec = infer_support_y_spec(maml) if support_y_spec is None else support_y_spec
    y_spec = tf.TensorSpec(y_spec.shape, y_spec.dtype, name=SUPPORT_Y)
    x_spec = _input_spec(maml.model)
    bn_training = maml.batch_statistics_at_inference
    model = maml.model
    meta = {**_maml_metadata(maml, steps, y_spec), "kind": "meta_learner", **(metadata or {})}
    in_spec, sx_spec, qx_spec = (tf.TensorSpec(x_spec.shape, x_spec.dtype, name=n) for n in (INPUTS, SUPPORT_X, QUERY_X))

    def adapt_and_predict(support_x, support_y, query_x):
        support_x, support_y, query_x = (
            _checked(t, s) for t, s in ((support_x, sx_spec), (support_y, y_spec), (query_x, qx_spec))
        )
        checks = [
            tf.debugging.assert_equal(tf.shape(support_x)[0], tf.shape(support_y)[0],
                                      message="support_x and support_y need the same number of examples"),
            tf.debugging.assert_positive(tf.shape(support_x)[0], message="the support set is empty"),
        ]
        with tf.control_dependencies(checks):
            support_x = tf.identity(support_x)
        # MAML's own inner loop, exactly as MAML.adapt / predict_after_adaptation run it.
        return {PREDICTIONS: maml.adapted_predictions(support_x, support_y, query_x, steps)}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory(prefix="tf_maml_assets_") as staging:
            keras_path = os.path.join(staging, KERAS_ASSET)
            if getattr(maml, "optimizer", None) is not None and not maml.optimizer.built:
                maml.optimizer.build(maml.trainable_variables)  # so load() can restore its (empty) state
            maml.save(keras_path)
            module = _ExportModule([_write_metadata(staging, meta), keras_path])
            theta = lambda: [v.value for v in model.trainable_variables]  # noqa: E731
            serve = tf.function(_predict_fn(model, theta, bn_training, in_spec), autograph=False,
                                input_signature=[in_spec])
            adapt = tf.function(adapt_and_predict, autograph=False, input_signature=[sx_spec, y_spec, qx_spec])
            module.serve, module.adapt_and_predict = serve, adapt
            _save(module, tmp, {"serving_default": serve.get_concrete_function(),
                                "adapt_and_predict": adapt.get_concrete_function()})

    return write_version(base_dir, name, write)


# ------------------------------------------------------------------------------------ loading
def load(path: str, compile: bool = True) -> MAML:
    """Restore the meta-learner of a :func:`export_meta_learner` export, for more adaptation or training.

    ``path`` is a version directory or the ``<name>`` directory (its highest version is used).
    """
    version_dir = resolve_version_dir(path)
    keras_path = os.path.join(version_dir, "assets", KERAS_ASSET)
    if not os.path.isfile(keras_path):
        raise ValueError(f"{version_dir} holds no {KERAS_ASSET}: it is not a meta-learner export "
                         "(export_model exports serve predictions only; load them with tf.saved_model.load).")
    maml = keras.models.load_model(keras_path, compile=compile)
    if not isinstance(maml, MAML):
        raise TypeError(f"{keras_path} holds a {type(maml).__name__}, not a tf_maml.MAML.")
    return maml


def restore_checkpoint(maml: MAML, checkpoint: str) -> int:
    """Load a ``tf.train`` checkpoint written by training (``fit_resumable``) into ``maml``.

    ``checkpoint`` is a checkpoint prefix or a directory (its latest checkpoint). Returns the meta-step.
    """
    prefix = tf.train.latest_checkpoint(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    if not prefix or not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(f"No checkpoint found at {checkpoint!r}: pass a checkpoint prefix (e.g. "
                                "runs/x/checkpoints/ckpt-1000) or a directory holding checkpoints.")
    objects = {"model": maml}
    if getattr(maml, "optimizer", None) is not None:
        maml.optimizer.build(maml.trainable_variables)
        objects["optimizer"] = maml.optimizer
    tf.train.Checkpoint(**objects).restore(prefix).assert_existing_objects_matched().expect_partial()
    return maml.meta_steps_done() if "optimizer" in objects else -1


def export_from_file(
    keras_path: str,
    base_dir: str,
    name: str,
    checkpoint: str | None = None,
    adapt_support: str | None = None,
    steps: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """One-command export (``scripts/export.py``): a saved ``MAML`` (``.keras``), optionally with the
    weights of a later training checkpoint, exported as a meta-learner, or, given ``adapt_support`` (an
    ``.npz`` with ``support_x`` and ``support_y`` of one task), adapted to that task and exported as a
    plain model."""
    maml = keras.models.load_model(keras_path)
    if not isinstance(maml, MAML):
        if adapt_support or checkpoint or steps is not None:
            raise TypeError(f"{keras_path} holds a {type(maml).__name__}, not a tf_maml.MAML: --checkpoint, "
                            "--adapt-support and --steps apply only to a saved MAML; export it without them.")
        return export_model(maml, base_dir, name, {"source_keras": source_path(keras_path), **(metadata or {})})
    source: dict[str, Any] = {"source_keras": source_path(keras_path)}
    if checkpoint:
        source["source_checkpoint"] = source_path(checkpoint)
        source["meta_steps_trained"] = restore_checkpoint(maml, checkpoint)
    meta = {**source, **(metadata or {})}
    if adapt_support:
        with np.load(adapt_support) as data:
            missing = {"support_x", "support_y"} - set(data.files)
            if missing:
                raise KeyError(f"{adapt_support} lacks {sorted(missing)}; it holds {data.files}.")
            sx, sy = data["support_x"], data["support_y"]
        meta["adapted_on"] = source_path(adapt_support)
        return export_adapted(maml, sx, sy, base_dir, name, steps=steps, metadata=meta)
    return export_meta_learner(maml, base_dir, name, metadata=meta, steps=steps)
