"""JAX in one folder: :mod:`.backend` runs a package, :mod:`.packager` writes one.

The artifact: a ``jax.export`` program in ``0/data/model.jax_exported``.
Importing this package imports no framework: the registry
(:data:`neuropod.backends.BUILTIN_BACKENDS`) imports :mod:`.backend` when a
model of this platform is loaded, and :mod:`.packager` imports the framework
only when it packages.
"""
