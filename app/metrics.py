"""Prometheus metrics of the service, in a registry of its own (one per app), with the process's own (CPU, memory,
file descriptors). ``app.observe.RequestTelemetry`` records the per-request ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

if TYPE_CHECKING:
    from index.index import ImageIndex

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        self.requests = Counter("alexnet_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "alexnet_http_request_seconds", "HTTP request latency", ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram(
            "alexnet_batch_size", "images per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )
        self.forward_seconds = Histogram(
            "alexnet_forward_seconds", "time of one batched forward pass", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("alexnet_batch_queue_depth", "images waiting for a forward pass", registry=self.registry)
        self.overloaded = Counter(
            "alexnet_overload_rejections", "requests refused at once (503) because the batcher's queue was full", registry=self.registry
        )
        self.client_gone = Counter(
            "alexnet_abandoned_requests", "requests not computed because their client had gone away", registry=self.registry
        )
        self.index_size = Gauge("alexnet_index_images", "images in the similarity index", registry=self.registry)
        self.rejected = Counter("alexnet_rejected_uploads", "uploads refused", ["reason"], registry=self.registry)
        self.applied_change = Gauge(
            "alexnet_index_applied_change", "the last change of the store's log this process's FAISS index holds", registry=self.registry
        )
        self.follow_lag = Gauge(
            "alexnet_index_follow_lag_seconds",
            "seconds since this process's index was last known current with the store (changes older than that are applied)",
            registry=self.registry,
        )
        self.store_reachable = Gauge("alexnet_store_reachable", "1 while the index can read the store's change log", registry=self.registry)
        self.staged_vectors = Gauge(
            "alexnet_staged_weights_vectors",
            "stored images with a vector of staged weights (re-embedding progress)",
            ["weights"],
            registry=self.registry,
        )
        self.staged_images = Gauge("alexnet_staged_weights_images", "images to re-embed in all", ["weights"], registry=self.registry)
        self.switches = Counter("alexnet_weights_switches", "times this process switched to other weights", registry=self.registry)
        self.familiarity = Counter(
            "alexnet_familiarity_answers",
            "pictures answered, by whether they were familiar to the model (unavailable: the weights carry no score)",
            ["familiar"],
            registry=self.registry,
        )

    def observe_weights(self, progress: dict[str, dict[str, object]]) -> None:
        """The staged weights' re-embedding progress (app.switching); weights no longer staged are dropped."""
        self.staged_vectors.clear()
        self.staged_images.clear()
        for weights, p in progress.items():
            self.staged_vectors.labels(weights[:12]).set(float(p["vectors"]))  # type: ignore[arg-type]
            self.staged_images.labels(weights[:12]).set(float(p["images"]))  # type: ignore[arg-type]

    def observe_index(self, index: ImageIndex) -> None:
        status = index.follow_status()
        self.index_size.set(len(index))
        self.applied_change.set(status["applied_change"])
        self.follow_lag.set(status["seconds_since_sync"])
        self.store_reachable.set(0 if status.get("store_error") else 1)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.forward_seconds.observe(seconds)
