"""The metrics reference: every Prometheus metric the code defines, and what a healthy value is.

Metrics are found by reading the source (every ``Counter(…)``, ``Gauge(…)``, ``Histogram(…)``,
``Summary(…)`` whose name is a literal ``hazardwatch_…``), so a metric added anywhere appears
without registering it here; :data:`HEALTHY` says what to expect of it, and a test fails while a
metric has no entry.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("park", "ingest", "rules", "alerting", "hazardwatch")
KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary",
         "Info": "info", "Enum": "enum"}

HEALTHY: dict[str, str] = {
    "hazardwatch_db_sync_replica_confirming": "1; 0 = the synchronous replica confirms no commit and hazardwatch "
                                              "keeps its commits on the primary alone (a failover now loses them): "
                                              "start the replica",
    "hazardwatch_db_sync_waits_cancelled_total": "0 while the synchronous replica runs (or none is configured); "
                                                 "rising = commits cut short after HAZARDWATCH_SYNC_COMMIT_WAIT",
    "hazardwatch_ingest_messages_total": "rises steadily with the gateways' traffic; flat = nothing arrives "
                                         "(broker, network or gateways down)",
    "hazardwatch_ingest_readings_total": "rises with the traffic; its rate is the park's readings per second",
    "hazardwatch_ingest_readings_stored_total": "follows readings_total (minus duplicates); flat while "
                                                "readings_total rises = the database is not taking writes",
    "hazardwatch_ingest_duplicate_readings_total": "near 0; rises after a broker redelivery or a gateway re-send "
                                                   "(harmless: stored once)",
    "hazardwatch_ingest_rejected_total": "0 or a trickle; a rising `reason` names a gateway to fix "
                                         "(see the rejects table)",
    "hazardwatch_ingest_batches_total": "rises while readings arrive",
    "hazardwatch_ingest_batch_seconds": "p99 well under 1 s; seconds = the database is slow or contended",
    "hazardwatch_ingest_batch_rows": "larger under load (batching), small when quiet",
    "hazardwatch_ingest_lag_seconds": "below the gateways' reporting interval plus a few seconds; minutes = "
                                      "a backlog is being drained or a gateway clock is wrong (history sent "
                                      "on …/backfill does not count: it is old by nature)",
    "hazardwatch_ingest_broker_sessions_total": "2 per broker per start (the live and the history session) plus "
                                                "1 per reconnect of either; rising steadily = the broker "
                                                "connection keeps dropping (network, credentials, a second "
                                                "client with the same id)",
    "hazardwatch_ingest_gateway_clock_offset_seconds": "within a few seconds of 0 per enterprise; minutes = that "
                                                       "gateway's clock is wrong (a blue alarm says so beyond the "
                                                       "bound)",
    "hazardwatch_ingest_qos0_dropped_total": "0; rising = QoS 0 messages arrive faster than they can be stored "
                                             "(gateways should publish at QoS 1)",
    "hazardwatch_ingest_read_pauses_total": "0 or rare; rising = the database writes cannot keep up and ingest "
                                            "stops reading until they do (nothing is lost: the broker holds it)",
    "hazardwatch_ingest_writes_in_flight": "0-3 (the writer connections); pinned at the maximum = the database "
                                           "is the bottleneck",
    "hazardwatch_ingest_queue_messages": "small (below 10,000, the in-flight window); stuck high = writes fail",
    "hazardwatch_ingest_broker_connected": "1 per broker on the leader; 0 for more than a few seconds = that broker "
                                           "unreachable (an orange alarm to the park after broker_unreachable_after)",
    "hazardwatch_ingest_backfill_queue_messages": "0 but while gateways re-send history, then up to 5,000 per "
                                                  "broker (the history session's window); stuck high = writes "
                                                  "fail",
    "hazardwatch_ingest_backfill_connected": "1 per broker on the leader, like broker_connected; 0 while "
                                             "broker_connected is 1 = that broker refuses the history session "
                                             "(client id …-backfill not allowed, a second client with that "
                                             "id): re-sent history waits in the broker. A subscription the "
                                             "ACL denies is accepted by Mosquitto and shows 1 here",
    "hazardwatch_ingest_backfill_copies_total": "rises with history re-sent on …/backfill (the live session's "
                                                "copies, acknowledged undecoded); the history itself is in "
                                                "readings_total",
    "hazardwatch_ingest_db_errors_total": "0; rising = database outage (retried; nothing is lost)",
    "hazardwatch_ingest_seq_gaps_total": "0 or rare; rising for one gateway = it loses batches before sending",
    "hazardwatch_ingest_gateway_status_total": "rare; many offline changes = flapping gateway links",
    "hazardwatch_rules_readings_total": "follows ingest's readings_total",
    "hazardwatch_rules_transitions_total": "a few per hour per `rule`; a burst is a flood or a chattering point",
    "hazardwatch_rules_open_alarms": "what the duty room sees on the board; stuck high = alarms not handled",
    "hazardwatch_rules_batch_seconds": "p99 in milliseconds; never the bottleneck",
    "hazardwatch_rules_db_errors_total": "0; rising = database outage (alarms still go out)",
    "hazardwatch_rules_gateway_clock_offset_seconds": "within a few seconds of 0 per `enterprise`; beyond "
                                                      "clock_skew_max (2 min) a blue clock alarm is raised: fix the "
                                                      "gateway's time source",
    "hazardwatch_rules_snapshots_total": "rises every snapshot_every (1 min) with `outcome=\"ok\"`; failures = "
                                         "database away (judging goes on)",
    "hazardwatch_rules_snapshot_bytes": "steady, roughly proportional to the sensors; a jump = a new learned "
                                        "state (e.g. more trend samples)",
    "hazardwatch_alerting_planned_total": "rises with alarms; by `channel` and `step`",
    "hazardwatch_alerting_attempts_total": "mostly `outcome=\"ok\"`; failed or rate-limited rising = "
                                           "a channel is down (retried, then the next channel)",
    "hazardwatch_alerting_outbox_pending": "0 or a few; growing for minutes = messages are not leaving",
    "hazardwatch_alerting_send_seconds": "p99 under the channel's timeout (5 s)",
    "hazardwatch_alerting_db_errors_total": "0; rising = database outage (messages go out from the local journal "
                                            "and are recorded when it returns)",
    "hazardwatch_alerting_unreachable_total": "0; each increase is a contact not reached for unreachable_after "
                                              "(10 min), reported to the duty room: fix the number or channel",
    "hazardwatch_stage_degraded": "0 for every `stage`; 1 = the stage is retrying a fault (see /readyz for why); "
                                  "it recovers by itself",
    "hazardwatch_alerting_flood_held_total": "0 except during a flood (messages folded into summaries)",
    "hazardwatch_heartbeat_timestamp_seconds": "within a beat (10 s, or half of systemd's WatchdogSec) of now; "
                                               "older than a minute = the instance is stuck (alert rule in "
                                               "deploy/ha)",
    "hazardwatch_heartbeat_url_pings_total": "rises once a minute with `outcome=\"ok\"` when a dead-man's-switch "
                                             "URL is set; failed rising = that service is unreachable from here",
    "hazardwatch_event_loop_lag_seconds": "below 0.1 s; seconds = a callback holds the one event loop (every "
                                          "stage waits; the log names where it was)",
    "hazardwatch_event_loop_stalls_total": "flat; each increase is the loop held for more than 2 s, logged with "
                                           "the code that held it",
    "hazardwatch_ha_leader": "1 on exactly one instance of the park, 0 on the others; summed 0 or 2 for more "
                             "than a minute = no leader or a split view (alert rules in deploy/ha)",
    "hazardwatch_ha_epoch": "the same on every instance that has led; rises by one at each takeover",
    "hazardwatch_ha_role_changes_total": "rises at start-up and at each takeover; rising steadily = leadership "
                                         "flaps (database link or clock trouble)",
}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    where: str


def _const_strs(node: ast.AST | None) -> tuple[str, ...]:
    if isinstance(node, ast.List | ast.Tuple):
        return tuple(e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return ()


def find_metrics(root: Path) -> list[Metric]:
    """Every literal ``hazardwatch_…`` metric defined under ``root``'s packages, sorted by name."""
    found: dict[str, Metric] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                if name not in KINDS or not node.args:
                    continue
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)
                        and first.value.startswith("hazardwatch_")):
                    continue
                doc = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else ""
                labels = _const_strs(node.args[2]) if len(node.args) > 2 else ()
                for kw in node.keywords:
                    if kw.arg == "labelnames":
                        labels = _const_strs(kw.value)
                    elif kw.arg == "documentation" and isinstance(kw.value, ast.Constant):
                        doc = kw.value.value
                found.setdefault(first.value, Metric(first.value, KINDS[name], str(doc), labels,
                                                     path.relative_to(root).as_posix()))
    return sorted(found.values(), key=lambda m: m.name)


def without_note(root: Path) -> list[str]:
    return [m.name for m in find_metrics(root) if m.name not in HEALTHY]


def render(root: Path) -> str:
    out = [
        "# Metrics reference",
        "",
        "<!-- Generated by `hazardwatch docs generate` from the metrics the code defines; do not edit. -->",
        "",
        "`GET /metrics` on every instance (Prometheus text format). Counters end in `_total`; histograms",
        "add `_bucket`, `_sum` and `_count`. Alert rules for hazardwatch's own health ship in",
        "`deploy/prometheus/hazardwatch-rules.yml`.",
        "",
        "| metric | type | labels | what it counts | healthy |",
        "|---|---|---|---|---|",
    ]
    for m in find_metrics(root):
        labels = ", ".join(f"`{x}`" for x in m.labels) or "—"
        note = HEALTHY.get(m.name, "(no note yet)")
        out.append(f"| `{m.name}` | {m.kind} | {labels} | {m.help} | {note.replace('|', '/')} |")
    out += ["", "Where each is defined:", ""]
    out += [f"- `{m.name}`: `{m.where}`" for m in find_metrics(root)]
    return "\n".join(out) + "\n"
