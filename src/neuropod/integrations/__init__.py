"""Integrations with engines that run neuropod packages beyond one process.

Each lives in its own subpackage behind its own extra: :mod:`neuropod.integrations.ray`
(``pip install 'neuropod-python[ray]'``) for Ray Serve and Ray Data. Importing this
package imports none of them.
"""
