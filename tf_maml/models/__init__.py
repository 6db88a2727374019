"""The networks of the MAML paper as plain Keras models."""

from tf_maml.models.fused_batch_norm import FusedBatchNormalization

__all__ = ["FusedBatchNormalization"]
