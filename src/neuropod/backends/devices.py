"""Choosing the GPU a backend runs on: one rule for every framework."""

from __future__ import annotations

from typing import Optional

from .base import gpu_unavailable_warning

__all__ = ["pick_gpu"]


def pick_gpu(visible_gpu: Optional[int], gpu_count: int, framework: str) -> Optional[int]:
    """The GPU index to run on, or None for the CPU.

    ``visible_gpu=None`` runs on the CPU. A GPU asked for that the framework
    does not see (``gpu_count`` GPUs, numbered from 0) warns and runs on the
    CPU, so a package packaged on a GPU machine still runs everywhere.
    """
    if visible_gpu is None:
        return None
    if 0 <= visible_gpu < gpu_count:
        return visible_gpu
    gpu_unavailable_warning(framework, visible_gpu)
    return None
