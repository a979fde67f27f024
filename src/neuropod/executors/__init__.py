"""Executors: where a model runs (in this process, in a worker, on a server).

:class:`Executor` is the public interface; the three executors
(:mod:`.inprocess`, :mod:`.ope`, :mod:`.remote`) and the option tables
(:mod:`.options`) are internal: ``load_neuropod`` builds them.
"""

from .base import Executor

__all__ = ["Executor"]
