"""The original Neuropod's import path for the TensorFlow packager: :mod:`neuropod.packagers.tensorflow`."""

from ...packagers.tensorflow import create_tensorflow_neuropod

__all__ = ["create_tensorflow_neuropod"]
