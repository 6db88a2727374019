"""Shapes, layer names and parameter counts of the paper's conv nets."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_maml.models.convnets import miniimagenet_convnet, omniglot_convnet

BLOCK_LAYERS = [f"block{i}_{kind}" for i in range(1, 5) for kind in ("conv", "bn", "relu")]


def test_omniglot_convnet_shapes_names_and_size():
    model = omniglot_convnet(5)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 5)
    names = [layer.name for layer in model.layers]
    assert set(BLOCK_LAYERS) <= set(names) and names[-2:] == ["features", "head"]
    assert [model.get_layer(f"block{i}_conv").output.shape[1] for i in range(1, 5)] == [14, 7, 4, 2]
    # conv 3·3·1·64+64, then 3 × (3·3·64·64+64), BN γ,β per block, Dense 64·5+5.
    assert model.count_params() - sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == (
        640 + 3 * 36928 + 4 * 128 + 325
    )
    logits = model(np.random.rand(7, 28, 28, 1).astype("float32"), training=True)
    assert logits.shape == (7, 5)


def test_miniimagenet_convnet_shapes_and_names():
    model = miniimagenet_convnet(5)
    assert model.input_shape == (None, 84, 84, 3) and model.output_shape == (None, 5)
    assert [model.get_layer(f"block{i}_pool").output.shape[1] for i in range(1, 5)] == [42, 21, 10, 5]
    assert model.get_layer("features").output.shape[1] == 5 * 5 * 32
    assert model(np.zeros((2, 84, 84, 3), "float32"), training=True).shape == (2, 5)


@pytest.mark.parametrize("build", [omniglot_convnet, miniimagenet_convnet])
def test_head_variables_are_selectable_by_layer_name(build):
    model = build(20)
    head = {id(v) for v in model.get_layer("head").trainable_variables}
    flags = [id(v) in head for v in model.trainable_variables]
    assert sum(flags) == 2, "ANIL adapts exactly the head's kernel and bias"
    assert isinstance(model.get_layer("block1_bn"), keras.layers.BatchNormalization)
