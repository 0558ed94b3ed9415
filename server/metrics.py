"""Prometheus metrics, one registry per app (tests run several apps in one process).

    unitrans_requests_total{route, status}          every HTTP request
    unitrans_request_seconds{route}                 latency histogram
    unitrans_batch_size{task}                       rows per model call
    unitrans_batch_seconds{task}                    model time per call
    unitrans_queue_depth{task}                      requests waiting for a batch
    unitrans_rejected_total{task, reason}           503s (queue full) and timeouts
    unitrans_adapter_requests_total{task, adapter}  rows served per adapter
    unitrans_batch_splits_total                     batches run adapter by adapter (table too small)
    unitrans_caption_joins_running_total            greedy captions that joined a running decode (continuous)
    unitrans_image_cache_hits_total                 image tokens served from the image-feature cache
    unitrans_image_cache_misses_total               image tokens the ViT had to compute
    unitrans_image_cache_bytes / _entries           what the cache holds now
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the /metrics route

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("unitrans_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("unitrans_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("unitrans_batch_size", "rows per batched model call", ["task"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("unitrans_batch_seconds", "model time per batched call", ["task"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("unitrans_queue_depth", "requests waiting for a batch", ["task"], registry=r)
        self.rejected = Counter("unitrans_rejected", "requests refused by the batcher", ["task", "reason"],
                                registry=r)
        self.adapter_rows = Counter("unitrans_adapter_requests", "rows served per adapter", ["task", "adapter"],
                                    registry=r)

        self.joined_running = Counter("unitrans_caption_joins_running", "greedy captions that joined a decode "
                                      "already running (caption_scheduler continuous)", registry=r)
        self.splits = Counter("unitrans_batch_splits", "batches run adapter by adapter: more distinct adapters "
                              "than free table slots", registry=r)

        self.image_cache_hits = Counter("unitrans_image_cache_hits", "image tokens served from the image-feature "
                                        "cache (one per image row and vision state)", registry=r)
        self.image_cache_misses = Counter("unitrans_image_cache_misses", "image tokens computed by the ViT", registry=r)
        self.image_cache_bytes = Gauge("unitrans_image_cache_bytes", "bytes held by the image-feature cache", registry=r)
        self.image_cache_entries = Gauge("unitrans_image_cache_entries", "entries in the image-feature cache",
                                         registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
