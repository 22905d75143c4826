"""Prometheus metrics of one server, in a registry of its own (never prometheus_client's global default one)."""

from __future__ import annotations


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("charrnn_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.characters = Counter("charrnn_characters_generated", "Characters generated", registry=r)
        self.active_streams = Gauge("charrnn_active_streams", "Rows being generated now (one per choice)",
                                    registry=r)
        self.queue_depth = Gauge("charrnn_queue_depth", "Requests waiting for a free row", registry=r)
        fast = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self.ttfc = Histogram("charrnn_time_to_first_character_seconds",
                              "From a completion request's arrival to its first generated character",
                              buckets=fast, registry=r)
        self.request_duration = Histogram("charrnn_request_duration_seconds",
                                          "From a completion request's arrival to its last character",
                                          buckets=fast + (30.0, 60.0, 120.0), registry=r)
        self.model_step = Gauge("charrnn_model_step", "Training step of the checkpoint loaded now", registry=r)
        self.reloads = Counter("charrnn_model_reloads", "Checkpoints reloaded by --watch", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
