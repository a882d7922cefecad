"""The rule stage's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RulesMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.readings = Counter("hazardwatch_rules_readings_total", "readings judged", registry=registry)
        self.transitions = Counter("hazardwatch_rules_transitions_total", "alarm transitions, by kind and rule",
                                   ["kind", "rule"], registry=registry)
        self.open = Gauge("hazardwatch_rules_open_alarms", "open alarms", registry=registry)
        self.judge_seconds = Histogram("hazardwatch_rules_batch_seconds", "time to judge one batch",
                                       buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5), registry=registry)
        self.db_errors = Counter("hazardwatch_rules_db_errors_total", "failed alarm writes (retried)",
                                 registry=registry)
        self.clock_offset = Gauge("hazardwatch_rules_gateway_clock_offset_seconds",
                                  "a gateway's measured clock minus hazardwatch's (negative: slow)", ["enterprise"],
                                  registry=registry)
        self.snapshots = Counter("hazardwatch_rules_snapshots_total", "learned-state snapshots, by outcome",
                                 ["outcome"], registry=registry)
        self.snapshot_bytes = Gauge("hazardwatch_rules_snapshot_bytes", "size of the last learned-state snapshot",
                                    registry=registry)
