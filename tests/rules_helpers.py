"""A small park and a driver that feeds the pure rule engine on a fake timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from park.model import Park
from park.sitefile import parse_site
from park.types import AlarmEventKind, GatewayStatus, ReadingBatch
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
              - {code: HS1, name: 苯罐区, grade: 3, vote_k: 2}
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


def park() -> Park:
    return Park.from_site(parse_site(SITE, environ={}))


class Driver:
    """Feeds readings at T0 + seconds and collects transitions as (kind, rule, tag, severity)."""

    def __init__(self, engine: RuleEngine | None = None) -> None:
        self.engine = engine or RuleEngine(park())
        self.park = self.engine.park
        self.log: list[Transition] = []
        self.next_id = 1

    def id(self, tag: str, ent: str = "E1") -> int:
        return self.park.by_key[(ent, tag)].id

    def _keep(self, out: list[Transition]) -> list[tuple[str, str, str | None, str]]:
        for t in out:
            if t.kind is AlarmEventKind.RAISED and t.alarm.alarm_id is None and t.alarm.rule != "flood":
                self.engine.bind(t.alarm, self.next_id)
                self.next_id += 1
        self.log += out
        return [(t.kind.value, t.alarm.rule, t.alarm.tag, t.alarm.severity.value) for t in out]

    def read(self, sec: float, tag: str, value: float, q: int = 0, ent: str = "E1") -> list[tuple]:  # type: ignore[type-arg]
        b = ReadingBatch.from_rows([(self.id(tag, ent), T0 + timedelta(seconds=sec), value, q)])
        return self._keep(self.engine.on_batch(b))

    def many(self, rows: list[tuple[float, str, float]]) -> list[tuple]:  # type: ignore[type-arg]
        b = ReadingBatch.from_rows([(self.id(t), T0 + timedelta(seconds=s), v, 0) for s, t, v in rows])
        return self._keep(self.engine.on_batch(b))

    def tick(self, sec: float) -> list[tuple]:  # type: ignore[type-arg]
        return self._keep(self.engine.on_tick(T0 + timedelta(seconds=sec)))

    def status(self, sec: float, ent: str, online: bool) -> list[tuple]:  # type: ignore[type-arg]
        return self._keep(self.engine.on_status(GatewayStatus(ent, online, T0 + timedelta(seconds=sec))))

    def open_alarms(self) -> dict[str, str]:
        return {k: a.state for k, a in self.engine.alarms.items()}

    def alarm(self, rule: str, tag: str | None = None) -> int:
        for a in self.engine.alarms.values():
            if a.rule == rule and (tag is None or a.tag == tag) and a.alarm_id is not None:
                return a.alarm_id
        raise AssertionError(f"no open {rule} alarm on {tag}")
