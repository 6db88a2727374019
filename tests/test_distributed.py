"""``fit`` under ``tf.distribute.MirroredStrategy`` splits the meta-batch across replicas and takes the same
meta-step as one device.

Two logical CPU devices stand in for two accelerators. They must be configured before TensorFlow
initialises its devices, which the test process has long done, so the check runs in a fresh subprocess.
"""

import pathlib
import json
import os
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
from tf_maml import MAML
from tf_maml.data.sinusoid import sample_sinusoid_tasks
from tf_maml.models.convnets import omniglot_convnet
from tf_maml.models.mlp import sinusoid_mlp

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
report = {}


class Recording(MAML):
    # Records the task axis each replica's train_step sees (at trace time).
    seen = []

    def train_step(self, data):
        Recording.seen.append(int(data[0].shape[0]))
        return super().train_step(data)


def one_step(make, batch, loss, **kwargs):
    # (θ before, θ and state after one fit step with SGD(1.0)) under the strategy, and on one device.
    out = []
    weights = None
    for scope in (strategy.scope(), tf.distribute.get_strategy().scope()):
        with scope:
            maml = Recording(make(), **kwargs)
            maml.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss, metrics=["accuracy"])
        if weights is None:
            weights = maml.get_weights()
        maml.set_weights(weights)
        history = maml.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
        out.append((maml, history))
    return weights, out


# 1. Sinusoid MLP: the θ change equals the single-device meta-gradient over the whole meta-batch. With
#    derivative-order annealing, meta-step 0 is first order (the tf.cond on the mirrored meta-step).
batch = tuple(t.numpy() for t in sample_sinusoid_tasks([1, 2], 8, 5, 5)[0])
for task_execution, recompute, until in (("vectorized", False, 0), ("map", False, 0), ("loop", False, 0),
                                         ("loop", True, 0), ("map", False, 1)):
    Recording.seen.clear()
    reference = MAML(sinusoid_mlp(seed=0), inner_lr=0.01, inner_steps=2, task_execution=task_execution,
                     first_order=bool(until))
    reference.compile(optimizer="sgd", loss="mse")
    with strategy.scope():
        maml = Recording(sinusoid_mlp(seed=0), inner_lr=0.01, inner_steps=2, task_execution=task_execution,
                         recompute_inner_loop=recompute, first_order_until=until)
        maml.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", metrics=["mae"])
    reference.model.set_weights(maml.model.get_weights())
    with tf.GradientTape() as tape:
        meta_loss = reference.meta_loss(batch)
    expected = tape.gradient(meta_loss, reference.model.trainable_variables)
    before = maml.model.get_weights()
    history = maml.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
    assert Recording.seen == [4, 4], Recording.seen  # each replica got half of the 8 tasks
    for b, a, g in zip(before, maml.model.get_weights(), expected):
        np.testing.assert_allclose(b - a, g.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(history["loss"][0], float(meta_loss), rtol=1e-5)  # metrics: all tasks
    report[task_execution + ("+recompute" if recompute else "") + ("+annealing" if until else "")] = history["loss"][0]

# 2. Batch norm with running statistics: the replicas' copies stay equal to the one-device values; so do
#    MAML++'s per-step batch-norm weights.
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (4, 10, 28, 28, 1)).astype(np.float32)
y = np.tile(np.arange(5, dtype=np.int32), (4, 2))
images = (x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
weights, ((dist, _), (single, _)) = one_step(
    lambda: omniglot_convnet(5, filters=4), images, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    inner_lr=0.4, inner_steps=2, batch_norm="running", per_step_batch_norm=True, task_execution="loop")
initial = dict(zip([w.path for w in dist.weights], weights))
step_copies = [w for w in dist.batch_norm_step_weights if w is not None]
assert len(step_copies) == 8 and all(np.abs(w.numpy() - initial[w.path]).max() > 0 for w in step_copies)  # trained
for var in dist.model.non_trainable_variables:
    copies = [c.numpy() for c in var.value.values]
    np.testing.assert_array_equal(copies[0], copies[1])
for a, b in zip(dist.get_weights(), single.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

# 3. Resumable training under the strategy (checkpoints name the meta-step, read from a mirrored variable),
#    with MAML++'s options on.
import tempfile
from tf_maml.data.sinusoid import sinusoid_episodes
from tf_maml.training import fit_resumable

work = tempfile.mkdtemp()
steps = []
for total in (4, 6):
    with strategy.scope():
        maml = MAML(sinusoid_mlp(seed=0), inner_lr=0.01, inner_steps=2, learn_inner_lr="per_step",
                    multi_step_loss=3, first_order_until=3, task_execution="map")
        maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    fit_resumable(maml, lambda start: sinusoid_episodes(4, 5, seed=0, start_step=start), total, 2, work,
                  tensorboard=False, verbose=0)
    steps.append(int(maml.optimizer.iterations.numpy()))
report["resumable"] = {"steps": steps, "checkpoints": sorted(f for f in os.listdir(os.path.join(work, "checkpoints"))
                                                              if f.endswith(".index"))}
print("RESULT " + json.dumps(report))
"""


def test_mirrored_strategy_meta_step_equals_one_device():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert set(result) == {"vectorized", "map", "loop", "loop+recompute", "map+annealing", "resumable"}
    assert result.pop("resumable") == {"steps": [4, 6], "checkpoints": ["ckpt-2.index", "ckpt-4.index", "ckpt-6.index"]}
