"""Ingest's Prometheus metrics; a fresh ``registry`` per test."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.errors import RejectReason


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("hazardwatch_ingest_messages_total", "MQTT messages received", registry=registry)
        self.readings = Counter("hazardwatch_ingest_readings_total", "readings decoded and accepted",
                                registry=registry)
        self.stored = Counter("hazardwatch_ingest_readings_stored_total", "new rows written to readings",
                              registry=registry)
        self.duplicates = Counter("hazardwatch_ingest_duplicate_readings_total",
                                  "readings already stored or twice in one write (redelivery, re-send)",
                                  registry=registry)
        self.rejected = Counter("hazardwatch_ingest_rejected_total", "messages or points rejected, by reason",
                                ["reason"], registry=registry)
        for r in RejectReason:
            self.rejected.labels(r.value)
        self.batches = Counter("hazardwatch_ingest_batches_total", "write transactions committed",
                               registry=registry)
        self.batch_seconds = Histogram("hazardwatch_ingest_batch_seconds", "write transaction duration",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                       registry=registry)
        self.batch_rows = Histogram("hazardwatch_ingest_batch_rows", "readings per write transaction",
                                    buckets=(1, 10, 100, 1000, 5000, 20000, 50000, 100000), registry=registry)
        self.lag = Gauge("hazardwatch_ingest_lag_seconds", "now minus the newest reading time of the last batch",
                         registry=registry)
        self.queue = Gauge("hazardwatch_ingest_queue_messages", "messages received but not yet acknowledged",
                           registry=registry)
        self.connected = Gauge("hazardwatch_ingest_broker_connected", "1 while the broker session is up, per broker",
                               ["broker"], registry=registry)
        self.backfill_queue = Gauge("hazardwatch_ingest_backfill_queue_messages",
                                    "history (…/backfill) messages received but not yet acknowledged",
                                    registry=registry)
        self.backfill_connected = Gauge("hazardwatch_ingest_backfill_connected",
                                        "1 while the history session (…/backfill) is up, per broker", ["broker"],
                                        registry=registry)
        self.backfill_copies = Counter("hazardwatch_ingest_backfill_copies_total",
                                       "live-session copies of …/backfill messages, acknowledged undecoded (the "
                                       "history session's copy is stored and judged)", registry=registry)
        self.db_errors = Counter("hazardwatch_ingest_db_errors_total", "failed write transactions (retried)",
                                 registry=registry)
        self.seq_gaps = Counter("hazardwatch_ingest_seq_gaps_total", "gateway batches missing by seq",
                                registry=registry)
        self.sessions = Counter("hazardwatch_ingest_broker_sessions_total", "broker connections accepted",
                                registry=registry)
        self.paused = Counter("hazardwatch_ingest_read_pauses_total",
                              "times reading from the broker paused: too much received and not yet committed",
                              registry=registry)
        self.qos0_dropped = Counter("hazardwatch_ingest_qos0_dropped_total",
                                    "QoS 0 messages dropped because the inbox was full (publish at QoS 1)",
                                    registry=registry)
        self.clock_offset = Gauge("hazardwatch_ingest_gateway_clock_offset_seconds",
                                  "a gateway's clock minus hazardwatch's, from its freshest readings",
                                  ["enterprise"], registry=registry)
        self.writes_in_flight = Gauge("hazardwatch_ingest_writes_in_flight", "write transactions under way",
                                      registry=registry)
        self.status = Counter("hazardwatch_ingest_gateway_status_total", "gateway status changes received",
                              ["online"], registry=registry)
