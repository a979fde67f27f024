"""``bench``: latency percentiles and throughput of a model, per execution mode, warm-up excluded.

Each mode loads the model its own way (``inprocess``, ``ope`` — a worker
process per concurrent caller —, or a server URL) and is driven by
``concurrency`` threads calling ``infer`` on the same inputs: first for the
warm-up (not recorded), then for ``duration`` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import OptionError
from ..loader import load_neuropod
from ..urls import is_model_url
from ._models import latency_stats
from .datasets import open_dataset
from .problem import Problem
from .synthetic import generate_inputs

__all__ = ["BenchResult", "bench"]

MODES = ("inprocess", "ope")


@dataclass
class BenchResult:
    """One mode's figures."""

    mode: str
    model: str
    platform: str
    batch_size: int
    concurrency: int
    calls: int
    seconds: float
    latency_ms: Dict[str, float]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def examples_per_s(self) -> float:
        return self.calls_per_s * self.batch_size

    def to_json(self) -> Dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.model,
            "platform": self.platform,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "calls": self.calls,
            "seconds": self.seconds,
            "latency_ms": self.latency_ms,
            "calls_per_s": self.calls_per_s,
            "examples_per_s": self.examples_per_s,
        }


def _load(target: str, mode: str, concurrency: int, load_options: Mapping[str, Any]) -> Any:
    if is_model_url(mode):
        return load_neuropod(mode)
    if mode == "inprocess":
        return load_neuropod(target, **load_options)
    if mode == "ope":
        return load_neuropod(target, use_ope=True, workers=concurrency, **load_options)
    raise OptionError(f"bench mode {mode!r}: expected inprocess, ope or a grpc:// / http:// URL")


def _drive(model: Any, inputs: Dict[str, np.ndarray], concurrency: int, warmup: float, duration: float) -> List[float]:
    """Every thread calls ``infer`` until the end; only calls that start and end inside the window count.

    The window opens ``warmup`` seconds after every thread has finished its first call.
    """
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    failures: List[BaseException] = []
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()
    timing: Dict[str, float] = {}

    def worker(mine: List[float]) -> None:
        try:
            model.infer(inputs)  # the first call (compilation, a worker's start) is never timed
        except BaseException as exc:
            failures.append(exc)
        ready.wait()
        go.wait()
        if failures:
            return
        measure_from, stop_at = timing["from"], timing["to"]
        clock = time.perf_counter
        try:
            while True:
                began = clock()
                if began >= stop_at:
                    return
                model.infer(inputs)
                ended = clock()
                if began >= measure_from and ended <= stop_at:
                    mine.append(ended - began)
        except BaseException as exc:  # reported after the join, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(mine,), daemon=True) for mine in latencies]
    for thread in threads:
        thread.start()
    ready.wait()  # every thread has made its first call
    now = time.perf_counter()
    timing["from"] = now + warmup
    timing["to"] = now + warmup + duration
    go.set()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return [value for mine in latencies for value in mine]


def bench(
    target: Any,
    *,
    modes: Sequence[str] = ("inprocess",),
    batch_size: int = 1,
    concurrency: int = 1,
    duration: float = 5.0,
    warmup: float = 1.0,
    data: Any = None,
    dims: Optional[Mapping[str, int]] = None,
    seed: int = 0,
    **load_options: Any,
) -> List[BenchResult]:
    """Time ``target`` in each of ``modes``; return one :class:`BenchResult` per mode.

    Args:
        target: a package path or a server URL.
        modes: ``"inprocess"``, ``"ope"`` and/or server URLs, run one after another.
        batch_size: examples per call (the batch dimension of generated inputs,
            or of the first batch of ``data``).
        concurrency: threads calling at once.
        duration: seconds measured per mode.
        warmup: seconds run first and not recorded.
        data: a dataset to take the inputs from; default: random inputs from the spec.
        dims: sizes for other symbols of generated inputs.
    """
    if concurrency < 1 or batch_size < 1 or duration <= 0 or warmup < 0:
        raise OptionError(
            f"bench: concurrency and batch must be >= 1, duration > 0 and warmup >= 0; got concurrency="
            f"{concurrency}, batch={batch_size}, duration={duration}, warmup={warmup}"
        )
    target = os.fspath(target)
    results = []
    for mode in modes:
        model = _load(target, mode, concurrency, load_options)
        try:
            problem = Problem(model.problem)
            if data is not None:
                inputs = next(iter(open_dataset(data, problem).batches(batch_size)))
                names = {s.name for s in problem.inputs}
                inputs = {k: v for k, v in inputs.items() if k in names}
            else:
                rng = np.random.default_rng(seed)
                inputs = generate_inputs(problem.definition, batch_size, rng, dims, problem.batch_dim())
            latencies = _drive(model, inputs, concurrency, warmup, duration)
            results.append(
                BenchResult(
                    mode=mode,
                    model=model.name,
                    platform=model.platform,
                    batch_size=batch_size,
                    concurrency=concurrency,
                    calls=len(latencies),
                    seconds=duration,
                    latency_ms=latency_stats(latencies),
                )
            )
        finally:
            model.close()
    return results
