"""Executors: where a model runs (in this process, in a worker, on a server)."""

from .base import Executor

__all__ = ["Executor"]
