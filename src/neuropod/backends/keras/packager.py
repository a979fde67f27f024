"""The original Neuropod's import path for the Keras packager: :mod:`neuropod.packagers.keras`."""

from ...packagers.keras import create_keras_neuropod, infer_keras_input_spec, infer_keras_output_spec

__all__ = ["create_keras_neuropod", "infer_keras_input_spec", "infer_keras_output_spec"]
