"""Keras 3 in one folder: :mod:`.backend` runs a package, :mod:`.packager` writes one.

The artifact: ``0/data/model.keras``, on whichever Keras backend is installed.
Importing this package imports no framework: the registry
(:data:`neuropod.backends.BUILTIN_BACKENDS`) imports :mod:`.backend` when a
model of this platform is loaded, and :mod:`.packager` imports the framework
only when it packages.
"""
