"""Prometheus metrics of one server: requests, errors, latency and batch sizes per model.

Each server has its own registry (not prometheus-client's global one), so
several servers in one process (tests, benchmarks) count separately.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST"]

# Inference latencies from ~100 us (tiny models on loopback) to 10 s.
_LATENCY_BUCKETS: Tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS: Tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The counters and histograms a server updates on every inference."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "neuropod_inference_requests",
            "Inference requests received, by model, version and protocol.",
            ["model", "version", "protocol"],
            registry=self.registry,
        )
        self.errors = Counter(
            "neuropod_inference_errors",
            "Inference requests that failed, by model, protocol and status code.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "neuropod_inference_duration_seconds",
            "Time from a request's arrival to its answer, by model and protocol.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "neuropod_batch_size",
            "Rows in each merged call of a dynamically batched model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

        # Each request updates two labelled children; looking them up through ``labels()``
        # (argument checks, a lock) costs more than the update, so they are kept here.
        self._request_counters: Dict[Tuple[str, str, str], Any] = {}
        self._latency_histograms: Dict[Tuple[str, str], Any] = {}

    def count_request(self, model: str, version: str, protocol: str) -> None:
        key = (model, version, protocol)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(model, version, protocol)
        counter.inc()

    def observe_latency(self, model: str, protocol: str, seconds: float) -> None:
        key = (model, protocol)
        histogram = self._latency_histograms.get(key)
        if histogram is None:
            histogram = self._latency_histograms[key] = self.latency.labels(model, protocol)
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)  # type: ignore[no-any-return]
