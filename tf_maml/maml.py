"""MAML as a Keras model: ``compile`` / ``fit`` / ``evaluate`` meta-learn the initial weights θ of any model."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_maml import inner_loop
from tf_maml.episode_batch import EpisodeBatch, as_episode_batch
from tf_maml.settings import BOOLEAN, Rule, check_value, integer, number

BATCH_NORM_MODES = ("transductive", "running")
TASK_EXECUTIONS = ("vectorized", "map", "loop")
LEARN_INNER_LR = Rule(lambda v: isinstance(v, (bool, np.bool_)) or (isinstance(v, str) and v == "per_step"),
                      "False, True (Meta-SGD) or 'per_step' (MAML++'s LSLR)")
_NONFINITE_MARKER = "tf_maml: non-finite meta-loss"


class MetaLossNotFiniteError(FloatingPointError):
    """The meta-loss became NaN or infinite; θ was not updated with it."""


@keras.saving.register_keras_serializable(package="tf_maml")
class MAML(keras.Model):
    """Model-Agnostic Meta-Learning over a wrapped Keras model.

    Args:
        model: a built Keras model; its trainable weights are θ, the initialisation that is meta-learned.
        inner_lr: the inner-loop step size α.
        inner_steps: gradient steps on the support set during meta-training.
        eval_inner_steps: steps during ``evaluate``/``adapt`` (default ``inner_steps``; the paper's reference
            code takes 10 at meta-test).
        first_order: treat the inner gradients as constants in the meta-gradient (FOMAML).
        learn_inner_lr: learn the inner step sizes with θ, starting from ``inner_lr``. ``True``: Meta-SGD, one
            rate per parameter element. ``"per_step"``: MAML++'s LSLR, one rate per weight tensor and inner
            step; steps beyond ``inner_steps`` (e.g. more steps at evaluation) reuse the last step's rates.
            These are learned as multipliers of ``inner_lr`` (starting at 1), so that the optimizer's steps
            are relative to α: Adam moves a raw rate by about its learning rate whatever the rate's size,
            which for α = 0.01 made the inner loop diverge within a few thousand meta-steps.
        multi_step_loss: MAML++'s multi-step loss: the meta-objective weighs the query loss after every inner
            step, uniformly at first and then linearly towards the last step alone, which it reaches after
            this many meta-steps (counted by ``optimizer.iterations``); from then on it is MAML's own loss.
            It steadies early training of many-step models. ``0`` (default) is off.
        first_order_until: MAML++'s derivative-order annealing: first-order meta-gradients for the first
            this many meta-steps (by ``optimizer.iterations``, so a resumed run picks up the right order),
            second order after. The early steps are cheaper, and second-order gradients start from a
            reasonable θ. Both orders are traced once and a ``tf.cond`` runs one per step, so tracing
            takes about twice as long, also in a run resumed past the switch. ``0`` (default) is off; no
            effect when ``first_order``.
        per_step_batch_norm: MAML++'s per-step batch-norm weights (BNWB): batch norm's scale γ and offset β
            are meta-learned once per number of inner steps taken instead of shared, and are not adapted
            in the inner loop. The model's own γ, β serve θ (no step taken); each inner step k = 1..
            ``inner_steps`` has a copy (``batch_norm_step_weights``, starting equal to them) used for every
            forward pass with the parameters after k steps, the next support loss and the query
            included; more steps (at evaluation) reuse the last copy. ``adapt`` and the exports carry the
            copy of the steps taken. Batch statistics stay shared between steps. A weight used only in
            support passes has no first-order meta-gradient: with first-order meta-gradients (``first_order``
            or before ``first_order_until``) θ's own γ, β do not train, nor do the copies of steps before
            the last unless ``multi_step_loss`` weighs their query losses.
        adapt_layers: names of the layers adapted in the inner loop (ANIL: only the head); the rest stay
            at θ. ``None`` adapts every trainable weight.
        batch_norm: ``"transductive"`` uses the statistics of the current batch everywhere, meta-test
            included (the paper's setting); ``"running"`` updates moving statistics during meta-training
            and uses them (``training=False``) at evaluation.
        task_execution: how the task axis is computed: ``"vectorized"`` (``tf.vectorized_map``),
            ``"map"`` (``tf.map_fn``, a graph loop: fast tracing) or ``"loop"`` (a Python loop, unrolled).
        recompute_inner_loop: trade compute for memory in second-order meta-training, with the same
            meta-gradient: the forward pass keeps nothing for the backward pass, which recomputes the tasks
            one at a time, and within a task each inner step from its input parameters
            (``inner_loop.recompute_tasks``, ``inner_loop.recomputed_gradient_step``). Measured 1.1-1.3× the
            step time; savings need graph mode (``fit`` compiles the step). No effect when ``first_order``.
    """

    def __init__(
        self,
        model: keras.Model,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        learn_inner_lr: bool | str = False,
        multi_step_loss: int = 0,
        first_order_until: int = 0,
        per_step_batch_norm: bool = False,
        adapt_layers: Sequence[str] | None = None,
        batch_norm: str = "transductive",
        task_execution: str = "vectorized",
        recompute_inner_loop: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_model(model)
        for name, steps in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            if steps is not None:
                _check_steps(steps, name)
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}.")
        if task_execution not in TASK_EXECUTIONS:
            raise ValueError(f"task_execution must be one of {TASK_EXECUTIONS}, got {task_execution!r}.")
        for name, flag in (("first_order", first_order), ("recompute_inner_loop", recompute_inner_loop),
                           ("per_step_batch_norm", per_step_batch_norm)):
            check_value(name, bool(flag) if isinstance(flag, np.bool_) else flag, BOOLEAN)
        learn_inner_lr = _checked_learn_inner_lr(learn_inner_lr, inner_steps)
        check_value("multi_step_loss", multi_step_loss, integer(0))
        check_value("first_order_until", first_order_until, integer(0))
        if isinstance(adapt_layers, str):
            raise TypeError(f"adapt_layers takes a list of layer names, e.g. [{adapt_layers!r}], got the string {adapt_layers!r}.")
        self.model = model
        self._inner_lr = _checked_inner_lr(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(inner_steps if eval_inner_steps is None else eval_inner_steps)
        self.first_order = bool(first_order)
        self.learn_inner_lr = learn_inner_lr
        self.multi_step_loss = int(multi_step_loss)
        self.first_order_until = int(first_order_until)
        self.adapt_layers = None if adapt_layers is None else list(adapt_layers)
        self.batch_norm = batch_norm
        self.task_execution = task_execution
        self.recompute_inner_loop = bool(recompute_inner_loop)
        self.per_step_batch_norm = bool(per_step_batch_norm)
        self._adapted = _adapted_mask(model, self.adapt_layers)
        # Per-step γ, β: one copy per inner step, stacked on a leading axis; the model's own γ, β are not
        # adapted (MAML++ meta-learns them only).
        self.batch_norm_step_weights = []
        step_weights = _batch_norm_weights(model) if self.per_step_batch_norm else set()
        if self.per_step_batch_norm:
            _check_per_step_batch_norm(model, step_weights, self.inner_steps)
        for i, var in enumerate(model.trainable_variables):
            if id(var) not in step_weights:
                self.batch_norm_step_weights.append(None)
                continue
            self._adapted[i] = False
            self.batch_norm_step_weights.append(
                self.add_weight(
                    shape=(self.inner_steps, *var.shape),
                    initializer=lambda shape, dtype, var=var: tf.tile(tf.convert_to_tensor(var.value)[None],
                                                                      [shape[0]] + [1] * len(var.shape)),
                    dtype=var.dtype,
                    name=f"batch_norm_step_weights_{i}",
                )
            )
        if self.per_step_batch_norm and self.first_order:
            warnings.warn(
                "per_step_batch_norm with first_order=True: the model's own batch-norm γ, β are used only in the "
                "first support pass, which has no first-order meta-gradient, so they will not train (nor will the "
                "copies of steps before the last, unless multi_step_loss weighs their query losses). Use second "
                "order, or first_order_until to start with first order.",
                stacklevel=2,
            )
        if not any(self._adapted):
            raise ValueError("With per_step_batch_norm the batch-norm weights are not adapted, and adapt_layers "
                             f"{self.adapt_layers} holds no other weights: nothing would adapt.")
        # Meta-SGD learns one rate per parameter element, LSLR one multiplier of α per inner step; a fixed
        # rate is a scalar.
        per_step = self.learn_inner_lr == "per_step"
        self.inner_lrs = []
        for i, var in enumerate(model.trainable_variables):
            if not self._adapted[i]:
                self.inner_lrs.append(None)
                continue
            shape = {False: (), True: tuple(var.shape), "per_step": (self.inner_steps,)}[self.learn_inner_lr]
            start = 1.0 if per_step else self.inner_lr
            self.inner_lrs.append(
                self.add_weight(
                    shape=shape,
                    # Filled in the variable's own dtype: Keras' Constant rounds through float32.
                    initializer=lambda shape, dtype, start=start: tf.fill(shape, tf.constant(start, dtype)),
                    trainable=bool(self.learn_inner_lr),
                    dtype=var.dtype,
                    name=f"inner_lr_scale_{i}" if per_step else f"inner_lr_{i}",
                )
            )
        self._prediction_fns: dict = {}
        self.pre_adaptation_loss = keras.metrics.Mean(name="pre_adaptation_loss")
        self.built = True

    @property
    def inner_lr(self) -> float:
        """The inner step size α (with ``learn_inner_lr=True`` the learned rates' initial value; with
        ``"per_step"`` the base that the learned multipliers scale)."""
        return self._inner_lr

    @inner_lr.setter
    def inner_lr(self, value: float) -> None:
        # The inner loop reads rate variables, not this number: assigning must reach them, or the change
        # would be saved in the config without ever being used.
        value = _checked_inner_lr(value)
        if self.learn_inner_lr == "per_step":
            raise AttributeError(
                "With learn_inner_lr='per_step' the inner rates are inner_lr times trained multipliers "
                "(maml.inner_lrs, one per inner step); scale those, e.g. [v.assign(v * 0.5) for v in maml.inner_lrs "
                "if v is not None]."
            )
        if self.learn_inner_lr:
            raise AttributeError(
                "With learn_inner_lr=True the inner rates are trained variables (maml.inner_lrs); assign to "
                "those, e.g. [v.assign(tf.fill(v.shape, 0.1)) for v in maml.inner_lrs if v is not None]."
            )
        for rate in self.inner_lrs:
            if rate is not None:
                rate.assign(value)
        self._inner_lr = value

    # ----------------------------------------------------------------------------------------- core
    def call(self, inputs, training=None):
        """Predict with θ (no adaptation). Transductive batch norm normalises with the batch's statistics
        here too (as the inner loop and the exported ``serving_default`` do), without touching the
        moving statistics; ``"running"`` follows ``training`` as Keras does."""
        if self.batch_statistics_at_inference:
            theta = [v.value for v in self.model.trainable_variables]
            outputs, _, _ = inner_loop.functional_call(self.model, theta, inputs, True)
            return outputs
        return self.model(inputs, training=training)

    @property
    def batch_statistics_at_inference(self) -> bool:
        """Whether prediction, evaluation and serving run the model with ``training=True``: transductive batch
        norm needs the batch's statistics, which Keras layers only use in training mode (so a model with
        both batch norm and dropout also drops out there). Models without batch norm run in inference mode."""
        return self.batch_norm == "transductive" and has_batch_norm(self.model)

    def _task_loss(self, y_true, y_pred):
        if self._compile_loss is None:
            raise RuntimeError("Call compile(optimizer, loss=...) before meta-training or evaluation.")
        # Keras loss *functions* return per-example values; the inner gradient needs the task mean.
        loss_fn = self.loss_fn
        value = tf.reduce_mean(loss_fn(y_true, y_pred))
        # Under a distribution strategy Keras Loss *objects* divide their mean by the number of replicas
        # (meant for a global batch): a task's loss is per task, so undo it, or the inner steps would
        # shrink; train_step scales the meta-loss itself.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1 and isinstance(loss_fn, keras.losses.Loss) and loss_fn.reduction in (
            "sum_over_batch_size", "mean", "mean_with_sample_weight"
        ):
            value = value * tf.cast(replicas, value.dtype)
        # A Loss object computes in its own dtype (float32 unless given dtype=...); return the model's.
        return tf.cast(value, y_pred.dtype) if y_pred.dtype.is_floating else value

    @property
    def loss_fn(self):
        loss = self.loss
        if isinstance(loss, (list, tuple, dict)):
            raise ValueError("MAML supports one loss for a single-output model; got several.")
        return keras.losses.get(loss)

    def _compiled_loss_fn(self):
        """The compiled loss, or None before ``compile`` (shape checks that need it are then skipped)."""
        loss = getattr(self, "loss", None)
        return None if loss is None or isinstance(loss, (list, tuple, dict)) else keras.losses.get(loss)

    def _forward(self, params, x, training, non_trainable=None):
        return inner_loop.functional_call(self.model, params, x, training, non_trainable)

    def _learning_rates(self):
        """The inner rates as ``inner_loop.adapt`` takes them: a list aligned with the weights, or for
        per-step rates a function of the step index."""
        rates = [None if lr is None else lr.value for lr in self.inner_lrs]
        if self.learn_inner_lr != "per_step":
            return rates
        last = self.inner_steps - 1
        return lambda k: [None if r is None else self.inner_lr * r[min(k, last)] for r in rates]

    def inner_rates(self) -> list[np.ndarray | None]:
        """The inner step sizes in use, aligned with the model's trainable weights (None: not adapted): a
        scalar, one per element (Meta-SGD) or one per inner step (``"per_step"``, α × its multipliers)."""
        scale = self.inner_lr if self.learn_inner_lr == "per_step" else 1.0
        return [None if lr is None else scale * np.asarray(lr.numpy()) for lr in self.inner_lrs]

    def _adapt_task(self, sx, sy, steps, training, first_order, on_step=None):
        """θ adapted on one task's support set; ``on_step(k, params)`` sees the parameters after each step."""
        # Read once, as tensors: a recomputed step must not read variables again inside a loop's gradient.
        non_trainable = [tf.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]

        def support_loss(params):
            pred, _, reg = self._forward(params, sx, training, non_trainable)
            return self._task_loss(sy, pred) + reg

        params = [v.value for v in self.model.trainable_variables]
        return inner_loop.adapt(params, support_loss, self._learning_rates(), steps, first_order, on_step,
                                recompute=self.recompute_inner_loop, params_at_step=self._params_at_step())

    def _params_at_step(self):
        """With ``per_step_batch_norm``, the function that puts step k's γ, β into the parameters; else None."""
        if not self.per_step_batch_norm:
            return None
        copies = {i: w.value for i, w in enumerate(self.batch_norm_step_weights) if w is not None}  # read once
        last = self.inner_steps

        def at_step(k: int, params: list) -> list:
            if k == 0:
                return params
            return [copies[i][min(k, last) - 1] if i in copies else p for i, p in enumerate(params)]

        return at_step

    def _query_predictions(self, sx, sy, qx, training, record_steps):
        """Query predictions after each number of inner steps in ``record_steps``, from one adaptation."""
        recorded = {}

        def record(k, params):
            if k in record_steps:
                recorded[k] = self._forward(params, qx, training)[0]

        self._adapt_task(sx, sy, max(record_steps), training, True, record)
        return [recorded[k] for k in record_steps]

    def _map_tasks(self, fn, elems, output_signature):
        if self.task_execution == "vectorized":
            return tf.vectorized_map(fn, elems, fallback_to_while_loop=True)
        if self.task_execution == "map":
            return tf.map_fn(fn, elems, fn_output_signature=output_signature)
        n = elems[0].shape[0]
        if n is None:
            raise ValueError("task_execution='loop' needs a static number of tasks per batch.")
        # One traced function called per task: the graph is built once, not once per task, which cuts
        # tracing time by the number of tasks; grappler inlines the calls so run time is unchanged.
        task_fn = tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})
        outs = [task_fn(tuple(e[t] for e in elems)) for t in range(n)]
        return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)

    def _episode_outputs(self, batch: EpisodeBatch, steps: int, training: bool, first_order: bool,
                         step_weights: tf.Tensor | None = None):
        """Per-task meta-objective, query loss before and after adaptation, adapted predictions and BN
        statistics. The objective is the final query loss, or with ``step_weights`` (one per inner step)
        the weighted sum of the query losses after every step (the multi-step loss)."""
        bn_training = training or self.batch_statistics_at_inference
        n_nt = len(self.model.non_trainable_variables)
        _check_example_shape(self.model, batch.support_x.shape[2:])
        _check_label_shape(self.model, self._compiled_loss_fn(), batch.support_y.shape[2:], "support labels")
        _check_label_shape(self.model, self._compiled_loss_fn(), batch.query_y.shape[2:], "query labels")
        if batch.query_x.shape.rank is not None and batch.query_x.shape[1] == 0:
            raise ValueError(f"The episodes hold no query examples (query_x has shape {batch.query_x.shape}): the "
                             "meta-loss is the loss on the query set, so sample at least one query example per "
                             "class (queries >= 1).")

        dtype = self.model.trainable_variables[0].dtype

        def per_task(elems):
            sx, sy, qx, qy = elems
            theta = [v.value for v in self.model.trainable_variables]
            pre_pred, _, _ = self._forward(theta, qx, bn_training)
            pre_loss = self._task_loss(qy, pre_pred)
            earlier = []

            def weigh_earlier_step(k, params):
                if step_weights is None or k == 0 or k == steps:
                    return
                weight = tf.cast(step_weights[k - 1], pre_loss.dtype)  # the loss's dtype (mixed precision)
                # Once annealed to 0 the step's query pass is skipped, not multiplied by 0.
                earlier.append(tf.cond(weight > 0, lambda: weight * self._query_loss(params, qx, qy, bn_training),
                                       lambda: tf.zeros((), pre_loss.dtype)))

            params = self._adapt_task(sx, sy, steps, bn_training, first_order, weigh_earlier_step)
            pred, new_nt, reg = self._forward(params, qx, bn_training)
            loss = self._task_loss(qy, pred) + reg
            objective = loss
            if step_weights is not None and steps > 0:
                objective = tf.add_n([tf.cast(step_weights[steps - 1], loss.dtype) * loss, *earlier])
            return objective, loss, pre_loss, pred, tuple(new_nt)

        nt_spec = tuple(tf.TensorSpec(v.shape, v.dtype) for v in self.model.non_trainable_variables)
        pred_spec = tf.TensorSpec(None, self.model.outputs[0].dtype if _has_outputs(self.model) else dtype)
        scalar = tf.TensorSpec((), dtype)
        signature = (scalar, scalar, scalar, pred_spec, nt_spec)
        if self.recompute_inner_loop and not first_order:
            outputs = inner_loop.recompute_tasks(
                lambda elems: self._map_tasks(per_task, elems, signature), per_task, tuple(batch))
        else:
            outputs = self._map_tasks(per_task, tuple(batch), signature)
        assert len(outputs[-1]) == n_nt
        return outputs

    def _query_loss(self, params, qx, qy, training):
        pred, _, reg = self._forward(params, qx, training)
        return self._task_loss(qy, pred) + reg

    def step_loss_weights(self, meta_step) -> tf.Tensor:
        """The meta-objective's weights of the query losses after inner steps 1..``inner_steps`` at
        ``meta_step``: with ``multi_step_loss`` uniform at 0, then linearly to the last step alone at
        ``multi_step_loss`` meta-steps; without it, the last step alone."""
        steps = max(self.inner_steps, 1)
        if not self.multi_step_loss:
            return tf.one_hot(steps - 1, steps, dtype=tf.float64)
        progress = tf.minimum(tf.cast(meta_step, tf.float64) / float(self.multi_step_loss), 1.0)
        earlier = tf.fill([steps - 1], (1.0 - progress) / steps)
        return tf.concat([earlier, [1.0 - tf.reduce_sum(earlier)]], 0)

    def _meta_step(self):
        """The optimizer's meta-step count (0 before ``compile``), which the MAML++ schedules follow."""
        optimizer = getattr(self, "optimizer", None)
        return tf.constant(0, tf.int64) if optimizer is None else optimizer.iterations

    def meta_steps_done(self) -> int:
        """Meta-steps taken so far (0 before ``compile``), as a Python int. Read with ``.numpy()``: ``int()``
        refuses the ``MirroredVariable`` that a distribution strategy makes of ``optimizer.iterations``."""
        return int(self._meta_step().numpy())

    def _training_step_weights(self) -> tf.Tensor | None:
        if not self.multi_step_loss or self.inner_steps < 2:
            return None
        return self.step_loss_weights(self._meta_step())

    def meta_loss(self, episode_batch, training: bool = True) -> tf.Tensor:
        """Mean post-adaptation query loss; differentiable with respect to θ (and learned rates). With
        ``multi_step_loss`` and ``training``, the multi-step loss at the optimizer's meta-step (0 before
        ``compile``); with ``first_order_until``, differentiable in the order ``train_step`` uses there."""
        batch = as_episode_batch(episode_batch)
        steps = self.inner_steps if training else self.eval_inner_steps
        weights = self._training_step_weights() if training else None
        if training and self._anneals_in_graph() and self.recompute_inner_loop:
            # The gradient of a tf.cond cannot reach what recompute's custom gradient captures.
            raise NotImplementedError(
                "meta_loss cannot be differentiated inside a tf.function with both first_order_until and "
                "recompute_inner_loop: call it eagerly, or train with fit/train_step, which support both."
            )

        def mean_objective(first_order: bool) -> tf.Tensor:
            return tf.reduce_mean(self._episode_outputs(batch, steps, training, first_order, weights)[0])

        return self._in_derivative_order(mean_objective) if training else mean_objective(self.first_order)

    def _anneals_in_graph(self) -> bool:
        return bool(self.first_order_until) and not self.first_order and not tf.executing_eagerly()

    def _in_derivative_order(self, fn):
        """``fn(first_order)`` in the order of the current meta-step: with ``first_order_until``, first order
        before it and second order from it; chosen in Python when eager, by a ``tf.cond`` in a graph."""
        if not self.first_order_until or self.first_order:
            return fn(self.first_order)
        early = self._meta_step() < self.first_order_until
        if tf.executing_eagerly():
            return fn(bool(early))
        return tf.cond(early, lambda: fn(True), lambda: fn(False))

    # ------------------------------------------------------------------------------------ Keras API
    def compile(self, *args, jit_compile: bool | str = False, **kwargs):
        """Keras ``compile``; XLA is off by default because it measured slower for MAML's nested tapes."""
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)  # so saved optimizer state can be loaded into it

    def train_step(self, data):
        batch = as_episode_batch(data)
        weights = self._training_step_weights()
        in_cond = self._anneals_in_graph()
        unconnected = []  # per traced order: the variables the meta-loss does not reach

        def meta_gradients(first_order: bool):
            meta_loss, grads, outputs = self._meta_gradients(batch, first_order, weights)
            unconnected.append({i for i, g in enumerate(grads) if g is None})
            if in_cond:  # both branches of the tf.cond must return tensors of the same kinds
                grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                         for g, v in zip(grads, self.trainable_variables)]
            return meta_loss, grads, outputs

        meta_loss, grads, (loss, pre_loss, pred, new_nt) = self._in_derivative_order(meta_gradients)
        # A variable unconnected in every order keeps a None gradient: the optimizer leaves it alone (no
        # weight decay or momentum on zeros) and Keras still warns about it.
        grads = [None if all(i in u for u in unconnected) else g for i, g in enumerate(grads)]
        grads = self._check_finite(meta_loss, grads)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        if self.batch_norm == "running":
            self._update_running_statistics(new_nt)
        return self._report(batch, loss, pre_loss, pred)

    def _meta_gradients(self, batch: EpisodeBatch, first_order: bool, step_weights):
        """Meta-loss, its gradients for ``trainable_variables`` and the episode outputs that are reported."""
        with tf.GradientTape() as tape:
            objective, loss, pre_loss, pred, new_nt = self._episode_outputs(
                batch, self.inner_steps, True, first_order, step_weights
            )
            meta_loss = tf.reduce_mean(objective)
            # Under a distribution strategy the replicas' gradients are summed: scale so the sum is the mean.
            scaled = meta_loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, meta_loss.dtype)
        return meta_loss, tape.gradient(scaled, self.trainable_variables), (loss, pre_loss, pred, new_nt)

    def test_step(self, data):
        batch = as_episode_batch(data)
        _, loss, pre_loss, pred, _ = self._episode_outputs(
            batch, self.eval_inner_steps, training=False, first_order=True
        )
        return self._report(batch, loss, pre_loss, pred)

    def _report(self, batch, loss, pre_loss, pred):
        self._loss_tracker.update_state(tf.reduce_mean(loss))
        self.pre_adaptation_loss.update_state(tf.reduce_mean(pre_loss))
        qy = batch.query_y
        flat_y = tf.reshape(qy, tf.concat([[-1], tf.shape(qy)[2:]], 0))
        flat_pred = tf.reshape(pred, tf.concat([[-1], tf.shape(pred)[2:]], 0))
        return self.compute_metrics(None, flat_y, flat_pred, sample_weight=None)

    def _check_finite(self, meta_loss, grads):
        step = self.optimizer.iterations
        ok = tf.math.is_finite(meta_loss)
        for g in grads:
            if g is not None:
                ok = tf.logical_and(ok, tf.reduce_all(tf.math.is_finite(g)))
        check = tf.debugging.Assert(ok, [_NONFINITE_MARKER + " at meta-step", step, "meta-loss", meta_loss])
        # The update must wait for the check, or a NaN step would reach θ before the error.
        with tf.control_dependencies([check]):
            return [None if g is None else tf.identity(g) for g in grads]

    def _update_running_statistics(self, new_nt):
        # Under a distribution strategy each replica holds its own copy of the statistics (Keras creates
        # them with aggregation "none"): average over replicas too, or the copies would drift apart.
        replica = tf.distribute.get_replica_context()
        synced = replica is not None and replica.num_replicas_in_sync > 1
        for var, values in zip(self.model.non_trainable_variables, new_nt):
            if "float" in str(var.dtype):  # Keras variables report dtypes as strings
                mean = tf.reduce_mean(values, axis=0)
                var.assign(replica.all_reduce("MEAN", mean) if synced else mean)
            else:
                var.assign(values[0])

    def _build_training_state(self, data) -> None:
        """Create optimizer and metric variables up front: created lazily inside the step function,
        they would make ``tf.function`` trace it a second time. Under a distribution strategy they must
        be created in its scope, as mirrored variables."""
        spec = tf.nest.flatten(data.element_spec) if isinstance(data, tf.data.Dataset) else []
        self._build_state_for(spec if len(spec) == 4 else None)

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Keras calls this under a distribution strategy to build state from one batch, as if it were
        # (x, y): an episode batch is not, so build from its query part instead.
        parts = [t for t in tf.nest.flatten(data_batch) if t is not None]
        self._build_state_for(parts if len(parts) == 4 else None)

    def _build_state_for(self, episode_spec) -> None:
        with self.distribute_strategy.scope():
            if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            metrics = self._compile_metrics
            if metrics is None or metrics.built or episode_spec is None:
                return
            query_x, query_y = episode_spec[2], episode_spec[3]
            dtype = keras.backend.standardize_dtype
            y = keras.KerasTensor((None, *query_y.shape[2:]), dtype=dtype(query_y.dtype))
            x = keras.KerasTensor((None, *query_x.shape[2:]), dtype=dtype(query_x.dtype))
            metrics.build(y, self.model.compute_output_spec(x))

    def evaluate(self, x=None, *args, **kwargs):
        self._build_training_state(x)
        return super().evaluate(x, *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        self._build_training_state(x)
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # episodes are sampled at random already; Keras warns otherwise
        try:
            return super().fit(x, *args, **kwargs)
        except tf.errors.InvalidArgumentError as err:
            if _NONFINITE_MARKER not in str(err):
                raise
            raise MetaLossNotFiniteError(
                f"The meta-loss or its gradient became NaN/infinite ({_step_from(err)}). θ was not updated "
                "with it, and checkpoints already written are intact. Lower inner_lr or the optimizer's "
                "learning rate, clip gradients (e.g. Adam(clipnorm=...)), or check the data for NaN."
            ) from None

    def predict(self, x, batch_size=None, *args, **kwargs):
        """Keras ``predict``; under transductive batch norm the whole input is one batch unless ``batch_size``
        says otherwise, since the batch's statistics normalise it (Keras' default of 32 would split it)."""
        if self.batch_statistics_at_inference:
            batch_size = _whole_input_batch_size(x, batch_size)
        return super().predict(x, batch_size, *args, **kwargs)

    # -------------------------------------------------------------------------------- adaptation API
    def predict_after_adaptation(self, support_x, support_y, query_x, steps: Sequence[int] = (0, 1)) -> np.ndarray:
        """Query predictions after each number of inner steps in ``steps``, for a batch of tasks.

        Inputs carry a leading task axis; returns ``[len(steps), tasks, queries, ...]``. θ never changes.
        """
        steps = tuple(sorted(set(_check_steps(s, "steps") for s in steps)))
        if not steps:
            raise ValueError("steps names no step count; pass e.g. steps=(0, 1, 10).")
        fn = self._prediction_fns.get(steps)
        if fn is None:
            bn_training = self.batch_statistics_at_inference

            @tf.function(reduce_retracing=True)
            def fn(sx, sy, qx):
                def per_task(elems):
                    return tf.stack(self._query_predictions(*elems, bn_training, steps))

                out_dtype = self.model.trainable_variables[0].dtype
                preds = self._map_tasks(per_task, (sx, sy, qx), tf.TensorSpec(None, out_dtype))
                return tf.transpose(preds, tf.concat([[1, 0], tf.range(2, tf.rank(preds))], 0))

            self._prediction_fns[steps] = fn
        query_x = tf.convert_to_tensor(query_x)
        support_y = tf.convert_to_tensor(support_y)
        no_labels = tf.zeros(tf.concat([tf.shape(query_x)[:2], tf.shape(support_y)[2:]], 0), support_y.dtype)
        batch = as_episode_batch((support_x, support_y, query_x, no_labels))
        _check_example_shape(self.model, batch.support_x.shape[2:])
        _check_label_shape(self.model, self._compiled_loss_fn(), batch.support_y.shape[2:], "support labels")
        return fn(batch.support_x, batch.support_y, batch.query_x).numpy()

    def adapted_predictions(self, support_x, support_y, query_x, steps: int | None = None) -> tf.Tensor:
        """Query predictions after ``steps`` inner steps on ONE task (no task axis). Traceable: the
        SavedModel's ``adapt_and_predict`` signature is this function."""
        steps = self.eval_inner_steps if steps is None else _check_steps(steps, "steps")
        support_x, support_y, query_x = self._one_task(support_x, support_y, query_x)
        (pred,) = self._query_predictions(support_x, support_y, query_x, self.batch_statistics_at_inference, (steps,))
        return pred

    def adapt(self, support_x, support_y, steps: int | None = None) -> keras.Model:
        """Adapt θ to one task (no task axis) and return an ordinary Keras model with the adapted weights.

        Under transductive batch norm the returned model (a :class:`TransductiveModel`) normalises with the
        statistics of each batch it is given, as :meth:`adapted_predictions` and the exported signatures do;
        its ``predict`` therefore takes the whole input as one batch unless ``batch_size`` is given.
        """
        steps = self.eval_inner_steps if steps is None else _check_steps(steps, "steps")
        support_x, support_y, _ = self._one_task(support_x, support_y)
        transductive = self.batch_statistics_at_inference
        params = self._adapt_task(support_x, support_y, steps, transductive, first_order=True)
        adapted = self._clone_for_prediction(transductive, support_x)
        adapted.set_weights(self.model.get_weights())  # non-trainable state (BN statistics) from θ
        for var, value in zip(adapted.trainable_variables, params):
            var.assign(value)
        return adapted

    def _clone_for_prediction(self, transductive: bool, example_x: tf.Tensor) -> keras.Model:
        """A copy of the architecture, with batch norm that uses batch statistics at prediction time too
        (whatever ``training`` the caller passes) when transductive."""
        if isinstance(self.model, keras.Sequential) or _has_outputs(self.model):

            def clone_layer(layer):
                if transductive and isinstance(layer, keras.layers.BatchNormalization):
                    return TransductiveBatchNormalization.from_config(layer.get_config())
                return layer.__class__.from_config(layer.get_config())

            clone = keras.models.clone_model(self.model, clone_function=clone_layer)
            if transductive:
                return TransductiveModel(inputs=clone.inputs, outputs=clone.outputs, name=clone.name)
            return clone
        if transductive:
            raise ValueError(
                f"adapt() cannot return a copy of the subclassed model '{self.model.name}' with transductive batch "
                "norm (its layers cannot be swapped). Use maml.adapted_predictions(support_x, support_y, query_x), "
                "batch_norm='running', or a functional/Sequential model."
            )
        try:
            clone = keras.models.clone_model(self.model)
        except Exception as err:
            raise TypeError(
                f"adapt() rebuilds the subclassed model '{self.model.name}' from its config and could not: {err}. "
                "Give the class a get_config() that returns its constructor arguments, or use "
                "maml.adapted_predictions(...) instead."
            ) from err
        clone(example_x[:1])  # create the weights
        return clone

    def _one_task(self, support_x, support_y, query_x=None) -> tuple:
        """Tensors of ONE task (no task axis), with the same checks as an episode batch."""
        support_x, support_y = tf.convert_to_tensor(support_x), tf.convert_to_tensor(support_y)
        query_x = support_x if query_x is None else tf.convert_to_tensor(query_x)
        expected = _input_rank(self.model)
        if expected is not None and support_x.shape.rank == expected + 1:
            raise ValueError(
                f"support_x has shape {support_x.shape}: one rank more than the model's input {self.model.inputs[0].shape}. "
                "This method takes ONE task without the task axis (e.g. support_x[0]); for a batch of tasks use "
                "predict_after_adaptation."
            )
        labels = tf.zeros(tf.concat([tf.shape(query_x)[:1], tf.shape(support_y)[1:]], 0), support_y.dtype)
        batch = as_episode_batch((support_x[None], support_y[None], query_x[None], labels[None]))
        _check_example_shape(self.model, batch.support_x.shape[2:])
        _check_label_shape(self.model, self._compiled_loss_fn(), batch.support_y.shape[2:], "support labels")
        return batch.support_x[0], batch.support_y[0], batch.query_x[0]

    # ------------------------------------------------------------------------------- serialisation
    def get_config(self):
        return {
            "model": keras.saving.serialize_keras_object(self.model),
            "inner_lr": self.inner_lr,
            "inner_steps": self.inner_steps,
            "eval_inner_steps": self.eval_inner_steps,
            "first_order": self.first_order,
            "learn_inner_lr": self.learn_inner_lr,
            "multi_step_loss": self.multi_step_loss,
            "first_order_until": self.first_order_until,
            "per_step_batch_norm": self.per_step_batch_norm,
            "adapt_layers": self.adapt_layers,
            "batch_norm": self.batch_norm,
            "task_execution": self.task_execution,
            "recompute_inner_loop": self.recompute_inner_loop,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_maml")
class TransductiveBatchNormalization(keras.layers.BatchNormalization):
    """Normalises with the current batch's statistics whatever ``training`` says (transductive MAML)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=True, mask=mask)


@keras.saving.register_keras_serializable(package="tf_maml")
class TransductiveModel(keras.Model):
    """A functional model with transductive batch norm: ``predict`` takes the whole input as one batch by
    default, because the batch's statistics normalise it (Keras' default batches of 32 would change them)."""

    def predict(self, x, batch_size=None, *args, **kwargs):
        return super().predict(x, _whole_input_batch_size(x, batch_size), *args, **kwargs)


# ---------------------------------------------------------------------------------------- helpers
def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"MAML wraps a Keras 3 model (keras.Model), got {type(model).__name__}. Build one with "
            "keras.Sequential([...]) or the functional API; tf.keras (Keras 2) models are not supported."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so its weights do not exist yet. Give it an Input "
            "(keras.Input(shape=...)) or call model.build(input_shape) before wrapping it in MAML."
        )
    if _has_outputs(model) and len(model.outputs) > 1:
        raise ValueError(
            f"Model '{model.name}' has {len(model.outputs)} outputs; MAML adapts a single-output model with one "
            "loss. Concatenate the outputs into one tensor (and split them in the loss), or wrap one head."
        )
    if not model.trainable_variables:
        raise ValueError(
            f"Model '{model.name}' has no trainable weights: there is nothing to meta-learn. "
            "Check that its layers are not frozen (layer.trainable = False)."
        )


def _checked_inner_lr(value) -> float:
    check_value("inner_lr", value, number(0, low_open=True))
    return float(value)


def learn_inner_lr_problem(value, inner_steps) -> str | None:
    """Why ``learn_inner_lr`` cannot go with ``inner_steps`` (None: it can)."""
    if isinstance(value, str) and value == "per_step" and inner_steps < 1:
        return "learn_inner_lr='per_step' learns one rate per inner step, so it needs inner_steps >= 1"
    return None


def _checked_learn_inner_lr(value, inner_steps) -> bool | str:
    check_value("learn_inner_lr", value, LEARN_INNER_LR)
    problem = learn_inner_lr_problem(value, inner_steps)
    if problem:
        raise ValueError(problem + ".")
    return bool(value) if isinstance(value, np.bool_) else value


def _check_steps(steps, name: str) -> int:
    check_value(name, steps, integer(0))
    return int(steps)


def _whole_input_batch_size(x, batch_size: int | None) -> int | None:
    """``batch_size`` if given, else the number of examples in ``x`` (a dataset keeps its own batching)."""
    if batch_size is not None or isinstance(x, tf.data.Dataset):
        return batch_size
    first = tf.nest.flatten(x)[0]
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) and shape[0] is not None else None


def _check_example_shape(model: keras.Model, example_shape: tf.TensorShape) -> None:
    """Examples must fit the model's input (checked on static shapes, once per trace), so a mismatch is named
    here rather than deep inside a traced inner loop."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return
    if not inputs or len(inputs) != 1 or example_shape.rank is None:
        return
    expected = tuple(inputs[0].shape[1:])
    got = tuple(example_shape)
    if len(expected) != len(got) or any(e is not None and g is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(
            f"The episodes' examples have shape {got} but model '{model.name}' takes inputs of shape {expected} "
            "(per example, after the task and example axes): reshape the data or build the model for it."
        )


def _label_kind(loss) -> str | None:
    """``"sparse"`` (class ids) or ``"dense"`` (one label per output unit) for Keras' own losses; None for a
    loss of the user's, which may pack its labels as it likes (extra columns, weights) and is not checked."""
    if loss is None:
        return None
    fn = getattr(loss, "fn", loss)  # Keras wraps its loss functions in LossFunctionWrapper objects
    owner = type(loss) if isinstance(loss, keras.losses.Loss) else loss
    if not all(getattr(x, "__module__", "").startswith("keras.") for x in (owner, fn)):
        return None
    name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
    return "sparse" if "sparse" in name else "dense"


def _check_label_shape(model: keras.Model, loss, label_shape: tf.TensorShape, name: str) -> None:
    """Labels must fit the model's output per example as the loss reads them, or a loss such as MSE would
    broadcast ``[K, 2]`` labels against ``[K, 1]`` outputs (or ``[K, 1]`` against ``[K, 2]``) without a word.
    Checked for Keras' own losses only (see :func:`_label_kind`), on static shapes, once per trace."""
    kind = _label_kind(loss)
    if kind is None or not _has_outputs(model) or label_shape.rank is None:
        return
    output = tuple(model.outputs[0].shape[1:])
    labels = tuple(label_shape)

    def same(a: tuple, b: tuple) -> bool:
        return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))

    if kind == "sparse":
        fits, wanted = bool(output) and (same(labels, output[:-1]) or same(labels, output[:-1] + (1,))), (
            f"class ids of shape {output[:-1]} (or {output[:-1] + (1,)})")
    else:
        a, b = labels, output  # a trailing unit axis on either side is squeezed by Keras' losses
        if len(a) == len(b) + 1 and a[-1] == 1:
            a = a[:-1]
        elif len(b) == len(a) + 1 and b[-1] == 1:
            b = b[:-1]
        fits, wanted = same(a, b), f"shape {output}, one label per output unit"
    if not fits:
        raise ValueError(
            f"The episodes' {name} have shape {labels} per example but model '{model.name}' outputs shape {output}, "
            f"and its loss '{getattr(loss, 'name', None) or getattr(loss, '__name__', loss)}' needs {wanted}: "
            "otherwise the loss would broadcast the two against each other. Reshape the labels, build the "
            "model's last layer for them, or pick the loss that matches them (sparse for class ids)."
        )


def _input_rank(model: keras.Model) -> int | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return len(inputs[0].shape) if inputs and len(inputs) == 1 else None


def _adapted_mask(model: keras.Model, adapt_layers: Sequence[str] | None) -> list[bool]:
    if adapt_layers is None:
        return [True] * len(model.trainable_variables)
    names = {layer.name: layer for layer in model._flatten_layers(include_self=False)}
    missing = [n for n in adapt_layers if n not in names]
    if missing:
        raise ValueError(f"adapt_layers {missing} are not layers of '{model.name}'; its layers are {sorted(names)}.")
    chosen = {id(w) for n in adapt_layers for w in names[n].trainable_variables}
    mask = [id(v) in chosen for v in model.trainable_variables]
    if not any(mask):
        raise ValueError(f"adapt_layers {list(adapt_layers)} hold no trainable weights; nothing would adapt.")
    return mask


def _batch_norm_weights(model: keras.Model) -> set[int]:
    """The ids of the batch-norm layers' trainable γ and β."""
    return {id(w) for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) for w in layer.trainable_variables}


def _check_per_step_batch_norm(model: keras.Model, weights: set[int], inner_steps: int) -> None:
    if not weights:
        raise ValueError(
            f"per_step_batch_norm=True learns batch norm's γ and β per inner step, but model '{model.name}' has no "
            "BatchNormalization layer with trainable scale or center. Add one, or leave per_step_batch_norm off."
        )
    problem = per_step_batch_norm_problem(True, inner_steps)
    if problem:
        raise ValueError(problem + ".")


def per_step_batch_norm_problem(value, inner_steps) -> str | None:
    """Why ``per_step_batch_norm`` cannot go with ``inner_steps`` (None: it can)."""
    if value is True and inner_steps < 1:
        return "per_step_batch_norm learns one copy of γ, β per inner step, so it needs inner_steps >= 1"
    return None


def has_batch_norm(model: keras.Model) -> bool:
    return any(isinstance(l, keras.layers.BatchNormalization) for l in model._flatten_layers(include_self=False))


def _has_outputs(model: keras.Model) -> bool:
    try:
        return bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _step_from(err: Exception) -> str:
    import re

    found = re.search(r"at meta-step\] \[(\d+)\]", str(err))
    return f"at meta-step {found.group(1)}, counted as optimizer.iterations" if found else "meta-step unknown"
