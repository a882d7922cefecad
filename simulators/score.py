"""Scoring a run against its ground truth: incidents detected, lead time over the plain HH crossing,
nuisance alarms per hour (ISA-18.2: about 6 an hour per operator is acceptable, 12 the most).

``offline_run`` simulates straight into the pure rule engine on simulated time, so a 24-hour day
with every scenario scores in about a minute; ``score`` works on any list of alarms, including
those read from the ``alarms`` table of a real run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from park.model import Park
from park.site import EnterpriseState
from park.types import AlarmEventKind, GatewayStatus, ReadingBatch, epoch_us
from rules.engine import RuleEngine
from rules.lifecycle import Transition
from simulators.park import SCENARIOS, Incident, ParkModel

GRACE = timedelta(minutes=5)
MIN_INCIDENT = timedelta(minutes=20)  # an alarm this long after an incident ended still belongs to it


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    enterprise: str
    tag: str | None
    rule: str
    severity: str
    raised_at: datetime


@dataclass(frozen=True, slots=True)
class IncidentScore:
    incident: Incident
    detected: bool
    first_alarm: datetime | None
    first_rule: str | None
    lead_minutes: float | None  # before the plain HH crossing; None when the scenario has no HH


@dataclass(frozen=True, slots=True)
class Score:
    incidents: list[IncidentScore]
    nuisance: int
    hours: float
    total_alarms: int

    @property
    def nuisance_per_hour(self) -> float:
        return self.nuisance / self.hours if self.hours else 0.0

    def table(self) -> str:
        lines = [f"{'scenario':<24}{'enterprise':<11}{'detected':<10}{'first alarm':<14}{'lead vs HH':>11}"]
        for s in self.incidents:
            first = f"{s.first_rule} +{(s.first_alarm - s.incident.start).total_seconds() / 60:.1f}m" \
                if s.first_alarm else "—"
            lead = f"{s.lead_minutes:.1f} min" if s.lead_minutes is not None else "—"
            lines.append(f"{s.incident.scenario:<24}{s.incident.enterprise:<11}{'yes' if s.detected else 'NO':<10}"
                         f"{first:<14}{lead:>11}")
        n = len(self.incidents)
        hit = sum(s.detected for s in self.incidents)
        leads = [s.lead_minutes for s in self.incidents if s.lead_minutes is not None]
        lines.append("")
        lines.append(f"incidents detected: {hit}/{n}")
        if leads:
            lines.append(f"trend/early warning ahead of plain HH: median {np.median(leads):.1f} min, "
                         f"min {min(leads):.1f} min (all {'ahead' if min(leads) > 0 else 'NOT all ahead'})")
        lines.append(f"alarms: {self.total_alarms} in {self.hours:.1f} h; not matching an incident (nuisance): "
                     f"{self.nuisance} = {self.nuisance_per_hour:.2f}/h — ISA-18.2: ≤ 6/h acceptable, ≤ 12/h at most "
                     f"{'✓' if self.nuisance_per_hour <= 6 else '✗'}")
        return "\n".join(lines)


def score(incidents: list[Incident], alarms: list[AlarmRecord], hours: float) -> Score:
    used: set[int] = set()
    out = []
    for inc in incidents:
        mine = [(i, a) for i, a in enumerate(alarms)
                if a.enterprise == inc.enterprise and inc.start <= a.raised_at <= inc.end + GRACE
                and (not inc.tags or a.tag is None or a.tag in inc.tags or inc.scenario == "plant_trip")]
        used.update(i for i, _ in mine)
        hits = sorted((a for _, a in mine if a.rule in inc.expected_rules), key=lambda a: a.raised_at)
        first = hits[0] if hits else None
        lead = None
        if first is not None and inc.hh_at is not None:
            lead = (inc.hh_at - first.raised_at).total_seconds() / 60
        out.append(IncidentScore(inc, first is not None, first.raised_at if first else None,
                                 first.rule if first else None, lead))
    nuisance = sum(1 for i in range(len(alarms)) if i not in used)
    return Score(out, nuisance, hours, len(alarms))


def offline_run(park: Park, hours: float = 24.0, seed: int = 7, tick: timedelta = timedelta(seconds=10),
                scenario_every: timedelta = timedelta(hours=1), scenarios: tuple[str, ...] = SCENARIOS,
                start: datetime | None = None, progress: bool = False) -> Score:
    """Simulate ``hours`` of the park into the pure rule engine and score it."""
    rng = random.Random(seed)
    model = ParkModel(park, seed)
    engine = RuleEngine(park)
    t0 = start or datetime(2026, 11, 23, tzinfo=UTC)
    t = t0
    end = t0 + timedelta(hours=hours)
    ids = np.array([s.id for s in park.sensors], np.int32)
    alarms: list[AlarmRecord] = []
    next_scenario = t0 + scenario_every / 2
    k = 0

    def keep(out: list[Transition]) -> None:
        for tr in out:
            if tr.kind is AlarmEventKind.RAISED and not tr.detail.get("realarm") and tr.alarm.rule != "flood":
                a = tr.alarm
                alarms.append(AlarmRecord(a.enterprise, a.tag, a.rule, a.severity.value, tr.ts))
                if a.alarm_id is None:
                    engine.bind(a, len(alarms))

    steps = 0
    while t < end:
        if t >= next_scenario and end - t >= MIN_INCIDENT:  # only incidents that have time to develop
            inc = model.start(scenarios[k % len(scenarios)], t, rng)
            k += 1
            next_scenario = t + scenario_every
            if inc.scenario == "gateway_offline":
                keep(engine.on_status(GatewayStatus(inc.enterprise, False, t)))
            if inc.scenario == "production_during_stop":
                keep(engine.set_enterprise_state(inc.enterprise, EnterpriseState.STOPPED, t))
        for inc in model.expire(t):
            if inc.scenario == "gateway_offline":
                keep(engine.on_status(GatewayStatus(inc.enterprise, True, t)))
            if inc.scenario == "production_during_stop":
                keep(engine.set_enterprise_state(inc.enterprise, EnterpriseState.RUNNING, t))
        vals = [model.value(s, t) for s in park.sensors]
        ok = np.array([v is not None for v in vals])
        v = np.array([x if x is not None else np.nan for x in vals])
        n = int(ok.sum())
        keep(engine.on_batch(ReadingBatch(ids[ok], np.full(n, epoch_us(t), np.int64), v[ok], np.zeros(n, np.int8),
                                          received_us=epoch_us(t)), t))
        keep(engine.on_tick(t))
        # the duty room acknowledges what it has seen a few minutes later, as operators do
        for a in list(engine.alarms.values()):
            if a.alarm_id is not None and a.state == "active_unacked" and t - a.raised_at > timedelta(minutes=3):
                keep(engine.ack(a.alarm_id, "值班员", t))
            elif a.alarm_id is not None and a.state == "cleared_unacked":
                keep(engine.ack(a.alarm_id, "值班员", t))
        t += tick
        steps += 1
        if progress and steps % 360 == 0:
            print(f"  simulated {(t - t0).total_seconds() / 3600:5.1f} h of {hours:g} h, {len(alarms)} alarms",
                  end="\r", flush=True)
    if progress:
        print()
    return score(model.truth, alarms, hours)
