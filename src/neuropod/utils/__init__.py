"""The original Neuropod's helper modules, under the names its users import.

- :mod:`neuropod.utils.config_utils`: reading, writing and checking ``config.json``.
- :mod:`neuropod.utils.eval_utils`: persisted test data and running it.
- :mod:`neuropod.utils.randomify`: a package that returns random outputs.

Each is a thin layer over the modern API (:mod:`neuropod.package`,
:mod:`neuropod.selftest`, :func:`neuropod.packagers.create_placeholder_neuropod`).
"""
