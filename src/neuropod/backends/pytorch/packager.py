"""The original Neuropod's import path for the PyTorch packager: :mod:`neuropod.packagers.python`."""

from ..python.packager import create_pytorch_neuropod

__all__ = ["create_pytorch_neuropod"]
