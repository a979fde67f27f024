"""The original Neuropod's import path for the PyTorch packager: :mod:`neuropod.packagers.python`."""

from ...packagers.python import create_pytorch_neuropod

__all__ = ["create_pytorch_neuropod"]
