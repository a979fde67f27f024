"""Eager PyTorch in one folder: :mod:`.packager` writes a package; the Python backend runs it.

As in the original, an eager PyTorch package is Python code (platform
``python``): its backend is :mod:`neuropod.backends.python.backend`, whose
model may return torch tensors. Importing this package imports no framework.
"""
