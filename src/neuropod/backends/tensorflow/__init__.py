"""TensorFlow in one folder: :mod:`.backend` runs a package, :mod:`.packager` writes one.

The artifact: a TF1 GraphDef (``0/data/model.pb``) or a TF2 SavedModel.
Importing this package imports no framework: the registry
(:data:`neuropod.backends.BUILTIN_BACKENDS`) imports :mod:`.backend` when a
model of this platform is loaded, and :mod:`.packager` imports the framework
only when it packages.
"""
