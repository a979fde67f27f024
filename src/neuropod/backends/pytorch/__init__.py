"""Eager PyTorch packages run on the Python backend (platform ``python``, as the original wrote).

This package only keeps the original Neuropod's import path
``neuropod.backends.pytorch.packager``.
"""
