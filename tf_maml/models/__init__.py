"""The networks of the MAML paper as plain Keras models."""
