"""The original Neuropod's import path for the TorchScript packager: :mod:`neuropod.packagers.torchscript`."""

from ...packagers.torchscript import create_torchscript_neuropod

__all__ = ["create_torchscript_neuropod"]
