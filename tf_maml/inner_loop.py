"""The functional inner loop: adapt a Keras model's weights to one task without touching its variables.

Everything here works on plain lists of tensors aligned with ``model.trainable_variables``; the Keras
model is only ever *called* (``stateless_call``), so it stays the single definition of the architecture.
Supervised MAML and MAML-TRPO both build on :func:`gradient_step`.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import keras
import tensorflow as tf

Params = list  # list[tf.Tensor], aligned with model.trainable_variables


def functional_call(
    model: keras.Model,
    params: Sequence[tf.Tensor],
    inputs: tf.Tensor,
    training: bool,
    non_trainable: Sequence[tf.Tensor] | None = None,
) -> tuple[tf.Tensor, list[tf.Tensor], tf.Tensor]:
    """Run ``model`` with ``params`` substituted for its trainable variables.

    Returns ``(outputs, updated_non_trainable_values, regularization_loss)``; the model's own
    variables are never assigned, so this is safe inside nested tapes and ``vectorized_map``.
    """
    if non_trainable is None:
        non_trainable = [v.value for v in model.non_trainable_variables]
    # A subclassed model's ``call`` may take no ``training`` argument; stateless_call would pass it anyway.
    kwargs = {"training": training} if _takes_training(model) else {}
    outputs, new_non_trainable, losses = model.stateless_call(
        list(params), list(non_trainable), inputs, return_losses=True, **kwargs
    )
    reg = tf.add_n([tf.cast(l, outputs.dtype) for l in losses]) if losses else tf.zeros((), outputs.dtype)
    return outputs, list(new_non_trainable), reg


def _takes_training(model: keras.Model) -> bool:
    signature = inspect.signature(model.call)
    return "training" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )


def gradient_step(
    params: Sequence[tf.Tensor],
    loss_fn: Callable[[Sequence[tf.Tensor]], tf.Tensor],
    learning_rates: Sequence[tf.Tensor | None],
    first_order: bool,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """One differentiable SGD step ``θ' = θ − α ⊙ ∇L(θ)`` on the parameters whose rate is not None.

    Called under an outer ``GradientTape`` the step is recorded, so the outer gradient includes the
    Hessian-vector products through it (second order). ``first_order`` stops the gradient of ∇L, which
    is the first-order MAML approximation (the outer gradient then treats ∇L as a constant).
    Returns the new parameters and the loss at the old ones.
    """
    params = [tf.convert_to_tensor(p) for p in params]
    adapted = [i for i, lr in enumerate(learning_rates) if lr is not None]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for i in adapted:
            tape.watch(params[i])
        loss = loss_fn(params)
    grads = tape.gradient(loss, [params[i] for i in adapted], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    new_params = list(params)
    for i, grad in zip(adapted, grads):
        if first_order:
            grad = tf.stop_gradient(grad)
        new_params[i] = params[i] - tf.cast(learning_rates[i], params[i].dtype) * grad
    return new_params, loss


def recomputed_gradient_step(
    params: Sequence[tf.Tensor],
    loss_fn: Callable[[Sequence[tf.Tensor]], tf.Tensor],
    learning_rates: Sequence[tf.Tensor | None],
) -> list[tf.Tensor]:
    """A second-order :func:`gradient_step` whose backward pass recomputes the step.

    The outer backward pass keeps only the step's inputs (the parameters and rates, a checkpoint)
    instead of the support activations and the inner gradient's intermediates; when it reaches the
    step it runs it again under nested tapes and takes the exact vector-Jacobian product
    ``v − α ⊙ H v`` (and ``−v ⊙ ∇L`` for learned rates), so gradients equal :func:`gradient_step`'s.
    ``tf.recompute_grad`` cannot do this: it runs the forward pass with every tape stopped, the
    inner tape included, so the inner gradient silently becomes zero. The saving needs graph mode
    (``tf.function``; eagerly an outer tape keeps what the forward pass records); it holds for
    one level of differentiation (the meta-gradient), not for gradients of it. As with any
    ``tf.custom_gradient``, tensors that ``loss_fn`` closes over get no gradient through the step: pass
    what must be differentiated in ``params``. Read variables outside and close over their values: a
    variable read inside the step is read again by the recomputation, which a ``tf.map_fn`` (while
    loop) gradient cannot capture.
    """
    n = len(params)
    adapted = [i for i, lr in enumerate(learning_rates) if lr is not None]

    def step(ps, rates):
        lrs = [None] * n
        for i, rate in zip(adapted, rates):
            lrs[i] = rate
        return gradient_step(ps, loss_fn, lrs, first_order=False)[0]

    @tf.custom_gradient
    def checkpointed(*inputs):
        def grad_fn(*upstream, variables=None):
            variables = list(variables or [])
            # Recompute only once the upstream gradient exists, i.e. in the backward pass proper.
            with tf.control_dependencies(upstream):
                again = [tf.identity(t) for t in inputs]
            with tf.GradientTape() as tape:
                tape.watch(again)
                out = step(again[:n], again[n:])
            # Variables that the step reads itself get gradients; those it only reaches through closure
            # tensors (values read outside) get none, like any closure, and are not touched again here.
            read = {v.ref() for v in tape.watched_variables()}
            used = [v for v in variables if v.ref() in read]
            grads = tape.gradient(out, again + used, output_gradients=list(upstream),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            by_ref = {v.ref(): g for v, g in zip(used, grads[len(again):])}
            return grads[: len(again)], [by_ref.get(v.ref()) for v in variables]

        return step(list(inputs[:n]), list(inputs[n:])), grad_fn

    rates = [tf.convert_to_tensor(learning_rates[i]) for i in adapted]
    return list(checkpointed(*[tf.convert_to_tensor(p) for p in params], *rates))


def recompute_tasks(map_tasks: Callable, task_fn: Callable, elems: tuple) -> object:
    """``map_tasks(elems)`` (all tasks at once) whose backward pass recomputes one task at a time.

    ``task_fn(elems_t)`` computes one task's outputs (``map_tasks`` stacks them on a task axis) from
    variables it reads itself. The forward pass keeps nothing for the backward pass but ``elems``; the
    backward pass runs a sequential loop over tasks (``parallel_iterations=1``) that recomputes task t
    under a tape, once its upstream gradient exists, and accumulates the exact vector-Jacobian product
    into the variables' gradients. Only one task's recomputation is alive at a time, so peak memory no
    longer scales with the number of tasks; with ``recomputed_gradient_step`` inside ``task_fn`` a task
    keeps one parameter copy per inner step instead of the steps' activations. ``elems`` (the data)
    get no gradient. Variables must be read inside ``task_fn``, not passed in as tensors, and
    ``task_fn`` must be deterministic (Keras' seeded layers are: ``stateless_call`` passes their seed
    state), or the recomputation would differ from the forward pass.
    """
    elems = tuple(tf.convert_to_tensor(e) for e in elems)

    @tf.custom_gradient
    def all_tasks(*data):
        outputs = map_tasks(data)

        def grad_fn(*upstream, variables=None):
            variables = list(variables or [])
            floats = [v for v in variables if v.dtype.is_floating]  # not e.g. a dropout seed's state
            flat_out = tf.nest.flatten(outputs)
            pairs = [(i, u) for i, (o, u) in enumerate(zip(flat_out, upstream))
                     if u is not None and o.dtype.is_floating]

            @tf.function(autograph=False)
            def task_vjp(elems_t, upstream_t):
                with tf.GradientTape() as tape:
                    out = tf.nest.flatten(task_fn(elems_t))
                return tape.gradient([out[i] for i, _ in pairs], floats, output_gradients=list(upstream_t),
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)

            def body(t, total):
                upstream_t = [tf.gather(u, t) for _, u in pairs]
                with tf.control_dependencies(upstream_t):  # recompute only in the backward pass proper
                    elems_t = tuple(tf.identity(tf.gather(e, t)) for e in data)
                return t + 1, [a + g for a, g in zip(total, task_vjp(elems_t, upstream_t))]

            n = tf.shape(data[0])[0]
            zeros = [tf.zeros(v.shape, v.dtype) for v in floats]
            _, total = tf.while_loop(lambda t, _: t < n, body, (tf.constant(0), zeros), parallel_iterations=1)
            by_ref = {v.ref(): g for v, g in zip(floats, total)}
            return [None] * len(data), [by_ref.get(v.ref()) for v in variables]

        return outputs, grad_fn

    return all_tasks(*elems)


def adapt(
    params: Sequence[tf.Tensor],
    loss_fn: Callable[[Sequence[tf.Tensor]], tf.Tensor],
    learning_rates: Sequence[tf.Tensor | None] | Callable[[int], Sequence[tf.Tensor | None]],
    steps: int,
    first_order: bool,
    on_step: Callable[[int, list[tf.Tensor]], None] | None = None,
    recompute: bool = False,
    params_at_step: Callable[[int, list[tf.Tensor]], list[tf.Tensor]] | None = None,
) -> list[tf.Tensor]:
    """``steps`` gradient steps (unrolled at trace time, so the graph is static and differentiable).

    ``on_step(k, params)`` is called with the parameters after k steps for k = 0..steps, which lets
    evaluation read predictions after every step from one adaptation. ``learning_rates`` may be a function
    of the step index k = 0..steps−1 (per-step rates). ``recompute`` (second order only; first order keeps
    no step intermediates anyway) uses :func:`recomputed_gradient_step`. ``params_at_step(k, params)``
    replaces non-adapted parameters that differ per step (MAML++'s per-step batch-norm weights) in the
    parameters after k steps, before ``on_step`` and the next step see them; it is applied between steps,
    so what it puts in is differentiated through the steps like any parameter, recomputed or not.
    """
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}.")

    def at_step(k: int, ps: list[tf.Tensor]) -> list[tf.Tensor]:
        return ps if params_at_step is None else list(params_at_step(k, ps))

    params = at_step(0, list(params))
    if on_step is not None:
        on_step(0, params)
    for k in range(steps):
        rates = learning_rates(k) if callable(learning_rates) else learning_rates
        if recompute and not first_order:
            params = recomputed_gradient_step(params, loss_fn, rates)
        else:
            params, _ = gradient_step(params, loss_fn, rates, first_order)
        params = at_step(k + 1, params)
        if on_step is not None:
            on_step(k + 1, params)
    return params
