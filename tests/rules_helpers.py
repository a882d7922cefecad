"""A small park and a driver that feeds the pure rule engine on a fake timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from park.model import Park
from park.sitefile import parse_site
from park.types import AlarmEventKind, GatewayClock, GatewayStatus, ReadingBatch, epoch_us
from rules.engine import RuleEngine
from rules.lifecycle import Transition

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)

SITE = """\
site: {name: 规则测试园区}
channels: {sms: {provider: http, url: "http://127.0.0.1:9/send"}}
alarm_management: {off_delay: 0s, comm_loss_after: 5m, flatline_after: 1h}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        enterprises:
          - code: E1
            name: 一号化工
            approved_load_kw: 1000
            hazard_sources:
              - {code: HS1, name: 苯罐区, grade: 3}
              - {code: HS2, name: 液氯, grade: 1}
            sensors:
              - {tag: LT, kind: tank_level, limits: {hh: 9, h: 8, l: 1, ll: 0.5}, deadband: 0.2, interval: 10s}
              - {tag: LTD, kind: tank_level, limits: {hh: 9, h: 8}, on_delay: 30s, off_delay: 20s}
              - {tag: G1, kind: gas_combustible, hazard_source: HS1}
              - {tag: G2, kind: gas_combustible, hazard_source: HS1}
              - {tag: G3, kind: gas_combustible, hazard_source: HS1}
              - {tag: CL, kind: gas_toxic, gas: Cl2, hazard_source: HS2}
              - {tag: PT, kind: pressure, limits: {hh: 2.0, h: 1.6}, hazard_source: HS2,
                 trend: {horizon: 20m, window: 10m}}
              - {tag: TT, kind: temperature, limits: {h: 60}, rate: {rise_per_min: 5}, range: {lo: -20, hi: 200}}
              - {tag: SP, kind: spark_detector}
              - {tag: JT, kind: power, limits: {h: 1000}}
          - code: E2
            name: 二号化工
            sensors:
              - {tag: X, kind: tank_level, limits: {hh: 9, h: 8}}
"""

Row = tuple[str, str, str | None, str]


def park(text: str = SITE) -> Park:
    return Park.from_site(parse_site(text, environ={}))


def at(sec: float) -> datetime:
    return T0 + timedelta(seconds=sec)


class Driver:
    """Feeds readings at T0 + seconds and collects transitions as (kind, rule, tag, severity).

    ``arrive`` is when a batch reaches hazardwatch (seconds; default: the newest reading's time,
    i.e. live data); ticks and commands run at the time given.
    """

    def __init__(self, engine: RuleEngine | None = None) -> None:
        self.engine = engine or RuleEngine(park())
        self.park = self.engine.park
        self.log: list[Transition] = []
        self.next_id = 1

    def id(self, tag: str, ent: str = "E1") -> int:
        return self.park.by_key[(ent, tag)].id

    def _keep(self, out: list[Transition]) -> list[Row]:
        for t in out:
            if t.kind is AlarmEventKind.RAISED and t.alarm.alarm_id is None and t.alarm.rule != "flood":
                self.engine.bind(t.alarm, self.next_id)
                self.next_id += 1
        self.log += out
        return [(t.kind.value, t.alarm.rule, t.alarm.tag, t.severity.value) for t in out]

    def batch(self, rows: list[tuple[float, str, float, int, str]], arrive: float | None = None) -> list[Row]:
        """Rows of (seconds, tag, value, quality, enterprise) as one batch."""
        b = ReadingBatch.from_rows([(self.id(t, e), at(s), v, q) for s, t, v, q, e in rows])
        when = at(arrive) if arrive is not None else at(max(r[0] for r in rows))
        b = ReadingBatch(b.sensor_id, b.ts_us, b.value, b.quality, received_us=epoch_us(when))
        return self._keep(self.engine.on_batch(b, when))

    def read(self, sec: float, tag: str, value: float, q: int = 0, ent: str = "E1",
             arrive: float | None = None) -> list[Row]:
        return self.batch([(sec, tag, value, q, ent)], arrive)

    def many(self, rows: list[tuple[float, str, float]], arrive: float | None = None) -> list[Row]:
        return self.batch([(s, t, v, 0, "E1") for s, t, v in rows], arrive)

    def tick(self, sec: float) -> list[Row]:
        return self._keep(self.engine.on_tick(at(sec)))

    def status(self, sec: float, ent: str, online: bool) -> list[Row]:
        return self._keep(self.engine.on_status(GatewayStatus(ent, online, at(sec))))

    def clock(self, sec: float, ent: str, offset_s: float) -> list[Row]:
        return self._keep(self.engine.on_clock(GatewayClock(ent, offset_s, at(sec))))

    def open_alarms(self) -> dict[str, str]:
        return {k: a.state for k, a in self.engine.alarms.items()}

    def alarm(self, rule: str, tag: str | None = None) -> int:
        for a in self.engine.alarms.values():
            if a.rule == rule and (tag is None or a.tag == tag) and a.alarm_id is not None:
                return a.alarm_id
        raise AssertionError(f"no open {rule} alarm on {tag}")

    def raised(self, rule: str | None = None) -> list[Transition]:
        return [t for t in self.log if t.kind is AlarmEventKind.RAISED and (rule is None or t.alarm.rule == rule)]

    def timeline(self) -> list[tuple[str, str, str | None, str, float]]:
        """Every transition as (kind, rule, tag or alarm key, severity, event time in seconds from T0)."""
        return [(t.kind.value, t.alarm.rule, t.alarm.tag or t.alarm.key, t.severity.value,
                 (t.ts - T0).total_seconds()) for t in self.log]


def ramp(tag: str, start: float, minutes: float, v0: float, per_min: float, every: float = 10.0,
         steady_minutes: float = 0.0) -> list[tuple[float, str, float]]:
    """Readings every ``every`` s: steady at ``v0`` for ``steady_minutes``, then rising ``per_min``."""
    out = []
    n = int((steady_minutes + minutes) * 60 / every)
    rng = np.random.default_rng(3)
    for k in range(n + 1):
        t = start + k * every
        m = max(0.0, (k * every) / 60 - steady_minutes)
        out.append((t, tag, v0 + per_min * m + float(rng.normal(0, 0.002))))
    return out
