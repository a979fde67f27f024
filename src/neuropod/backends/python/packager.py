"""The original Neuropod's import path for the Python packager: :mod:`neuropod.packagers.python`."""

from ...packagers.python import create_python_neuropod

__all__ = ["create_python_neuropod"]
