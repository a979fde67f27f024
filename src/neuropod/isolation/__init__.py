"""Isolated workers: a package's code runs with only what it needs.

``load_neuropod(path, isolation="sandbox")`` (or ``"container"``) runs the
model in a worker that cannot reach the network, the caller's files or other
processes; see ``docs/isolation.md``. :mod:`neuropod.trust` decides which
packages must be isolated.
"""

from .options import ISOLATION_LEVELS, ISOLATION_OPTIONS, IsolationOptions

__all__ = ["ISOLATION_LEVELS", "ISOLATION_OPTIONS", "IsolationOptions"]
