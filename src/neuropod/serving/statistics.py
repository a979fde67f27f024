"""Per-model inference statistics (the v2 statistics extension), as tritonclient reads them.

One :class:`ModelStatistics` per served model keeps counts and summed
durations; :meth:`ModelStatistics.as_dict` renders them in the extension's
JSON form, which the REST adapter answers as is and the gRPC adapter parses
into ``ModelStatisticsResponse`` (the two protocols share field names).

What the durations cover: ``compute_input`` is decoding and checking the
request, ``queue`` the wait for a thread or a batch, ``compute_infer`` the
model call, ``compute_output`` building the response's tensors; ``success``
and ``fail`` the whole request.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

__all__ = ["ModelStatistics"]

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class ModelStatistics:
    """Counts and summed nanoseconds for one model version (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._durations: Dict[str, List[int]] = {name: [0, 0] for name in _DURATIONS}
        self._batches: Dict[int, List[int]] = {}  # batch size -> [count, compute_infer ns]
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def _add(self, name: str, ns: int) -> None:
        entry = self._durations[name]
        entry[0] += 1
        entry[1] += max(0, ns)

    def succeeded(self, rows: int, total_ns: int, input_ns: int, queue_ns: int, infer_ns: int, output_ns: int) -> None:
        """One request answered: ``rows`` inferences (its batch size; 1 for an unbatched model)."""
        durations = self._durations
        now_ms = int(time.time() * 1000)
        with self._lock:
            for name, ns in (
                ("success", total_ns),
                ("compute_input", input_ns),
                ("queue", queue_ns),
                ("compute_infer", infer_ns),
                ("compute_output", output_ns),
            ):
                entry = durations[name]
                entry[0] += 1
                entry[1] += ns if ns > 0 else 0
            self.inference_count += rows
            self.last_inference_ms = now_ms

    def failed(self, total_ns: int) -> None:
        with self._lock:
            self._add("fail", total_ns)
            self.last_inference_ms = int(time.time() * 1000)

    def executed(self, batch_size: int, infer_ns: int) -> None:
        """One call of the model, over ``batch_size`` rows."""
        with self._lock:
            self.execution_count += 1
            entry = self._batches.setdefault(batch_size, [0, 0])
            entry[0] += 1
            entry[1] += infer_ns

    def as_dict(self, name: str, version: str) -> Dict[str, Any]:
        """The model's entry of a statistics answer (``model_stats[i]``)."""
        with self._lock:
            zero = {"count": 0, "ns": 0}
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {key: {"count": c, "ns": ns} for key, (c, ns) in self._durations.items()},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": dict(zero),
                        "compute_infer": {"count": count, "ns": ns},
                        "compute_output": dict(zero),
                    }
                    for size, (count, ns) in sorted(self._batches.items())
                ],
            }
