"""Alerting's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AlertingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.planned = Counter("hazardwatch_alerting_planned_total", "messages planned into the outbox",
                               ["channel", "step"], registry=registry)
        self.attempts = Counter("hazardwatch_alerting_attempts_total", "delivery attempts by outcome",
                                ["channel", "outcome"], registry=registry)
        self.pending = Gauge("hazardwatch_alerting_outbox_pending", "messages waiting in the outbox",
                             registry=registry)
        self.send_seconds = Histogram("hazardwatch_alerting_send_seconds", "one delivery attempt",
                                      ["channel"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                      registry=registry)
        self.flood_held = Counter("hazardwatch_alerting_flood_held_total",
                                  "messages folded into a flood summary instead of sent one by one",
                                  registry=registry)
        self.db_errors = Counter("hazardwatch_alerting_db_errors_total",
                                 "database errors met (the work went to the local journal or was retried)",
                                 registry=registry)
        self.unreachable = Counter("hazardwatch_alerting_unreachable_total",
                                   "contacts reported to the duty room as not reached in time", registry=registry)
