"""Runs before any test module touches TensorFlow: two logical CPU devices,
so MirroredStrategy has two replicas on a machine without GPUs."""

from tf_mha import training

training.logical_cpus(2)
