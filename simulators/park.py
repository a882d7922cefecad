"""A simulated chemical park: a seeded site-file generator, physical sensor models, and scenarios
with ground truth. Deterministic for a seed: the same seed gives the same site and the same stream.

Models (per sensor kind): tank levels fill and draw off in cycles; temperatures swing with the
day; gas detectors sit near zero with noise and slow drift; dust collectors' ΔP climbs as filters
load and drops at each cleaning pulse; power follows shifts, weekends and stops; switches stay off.
Scenarios lay an incident over the models and record what should be detected, where and from when.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from park.model import Park, SensorSpec
from park.site import SensorKind

DISTRICTS = [
    ("HM", "海门区", [("LJ", "临江镇"), ("GZ", "港中街道")]),
    ("DT", "东滩区", [("DX", "东兴镇"), ("NH", "南湖镇")]),
]
ENT_WORDS = ["海江", "临港", "东方", "华盛", "金川", "宏达", "瑞丰", "恒远", "新纪元", "永安", "晨光", "鑫源"]
ENT_KINDS = ["石化储运有限公司", "氯碱化工股份有限公司", "精细化工有限公司", "金属制品有限公司"]
TOXIC = ["H2S", "NH3", "Cl2", "CO", "C6H6", "HCl"]


def site_yaml(seed: int = 7, enterprises: int = 12, console: bool = True, flatline_after: str = "2h") -> str:
    """A realistic demo park: 2 districts, 4 towns, ``enterprises`` enterprises, ~24 sensors each."""
    rng = random.Random(seed)
    lines = ["site: {name: 示范化工园区（演示）}",
             f"alarm_management: {{comm_loss_after: 3m, flatline_after: {flatline_after}}}",
             f"channels: {{console: {'true' if console else 'false'}}}",
             "districts:"]
    e = 0
    per_town = max(1, enterprises // 4)
    for dcode, dname, towns in DISTRICTS:
        lines += [f"  - code: {dcode}", f"    name: {dname}", "    towns:"]
        for tcode, tname in towns:
            lines += [f"      - code: {tcode}", f"        name: {tname}", "        enterprises:"]
            for _ in range(per_town):
                kind = ENT_KINDS[e % len(ENT_KINDS)]
                code = f"E{e + 1:03d}"
                lines += [f"          - code: {code}", f"            name: {ENT_WORDS[e % len(ENT_WORDS)]}{kind}",
                          "            approved_load_kw: 2000"]
                if "金属" in kind:
                    lines.append("            dust_explosion: true")
                lines += ["            hazard_sources:",
                          f"              - {{code: HS1, name: 罐区, grade: {rng.choice([1, 2, 3])}, vote_k: 2}}",
                          "            sensors:"]
                for t in range(4):
                    lines.append(f"              - {{tag: LT-{101 + t}, kind: tank_level, hazard_source: HS1, "
                                 f"name: T-{101 + t}储罐液位, limits: {{hh: 9.0, h: 8.5, l: 1.0, ll: 0.5}}, "
                                 "interval: 10s}")
                    lines.append(f"              - {{tag: TT-{101 + t}, kind: temperature, hazard_source: HS1, "
                                 f"name: T-{101 + t}罐温, limits: {{hh: 60, h: 50}}, rate: {{rise_per_min: 3}}, "
                                 "interval: 10s}")
                for g in range(6):
                    lines.append(f"              - {{tag: AT-{201 + g}, kind: gas_combustible, hazard_source: HS1, "
                                 f"name: 罐区可燃气体{g + 1}#, interval: 10s}}")
                gas = TOXIC[e % len(TOXIC)]
                for g in range(4):
                    lines.append(f"              - {{tag: AT-{301 + g}, kind: gas_toxic, gas: {gas}, "
                                 f"name: {gas}检测{g + 1}#, interval: 10s}}")
                lines.append("              - {tag: PT-401, kind: pressure, hazard_source: HS1, name: 氮封压力, "
                             "limits: {hh: 6.0, h: 5.0, l: 0.5}, interval: 10s}")
                lines.append("              - {tag: OX-501, kind: oxygen, name: 受限空间氧含量, interval: 10s}")
                lines += [f"              - {{tag: FT-70{f}, kind: flow, name: 进料流量{f}#, "
                          "limits: {hh: 60, h: 50}, interval: 10s}" for f in (1, 2)]
                if "金属" in kind:
                    lines += ["              - {tag: PDT-601, kind: dust_dp, name: 除尘器压差, "
                              "limits: {hh: 2000, h: 1600, l: 200}, interval: 10s}",
                              "              - {tag: TT-601, kind: dust_hopper_temp, name: 灰斗温度, "
                              "limits: {hh: 70, h: 60}, interval: 10s}",
                              "              - {tag: SP-601, kind: spark_detector, name: 火花探测, interval: 10s}",
                              "              - {tag: RS-601, kind: run_state, name: 除尘风机运行, interval: 10s}"]
                lines.append("              - {tag: JT-001, kind: power, name: 全厂总负荷, limits: {h: 2000}, "
                             "interval: 60s}")
                e += 1
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Incident:
    """Ground truth: what should be detected, where, and from when."""

    scenario: str
    enterprise: str
    tags: tuple[str, ...]
    expected_rules: tuple[str, ...]
    start: datetime
    end: datetime
    hh_at: datetime | None = None  # when the plain HH threshold is first crossed (lead-time scoring)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("start", "end", "hh_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


@dataclass(slots=True)
class _Active:
    incident: Incident
    params: dict[str, float] = field(default_factory=dict)


SCENARIOS = ("slow_leak", "tank_overfill", "runaway_temperature", "stuck_detector", "gateway_offline",
             "production_during_stop", "hopper_heating", "plant_trip", "chattering")


class ParkModel:
    """Values of every sensor at any time, plus the scenarios laid over them."""

    def __init__(self, park: Park, seed: int = 7) -> None:
        self.park = park
        self.seed = seed
        rng = random.Random(seed)
        self.phase = {s.id: rng.random() * 2 * math.pi for s in park.sensors}
        self.noise = random.Random(seed + 1)
        self.active: list[_Active] = []
        self.truth: list[Incident] = []
        self.offline: set[str] = set()
        self.stopped: set[str] = set()

    # --- normal operation ---------------------------------------------------------------------
    def value(self, s: SensorSpec, t: datetime) -> float | None:
        """The sensor's value at ``t``; None when its gateway is offline."""
        if s.enterprise in self.offline:
            return None
        x = t.timestamp()
        ph = self.phase[s.id]
        n = self.noise.gauss(0, 1)
        day = math.sin(2 * math.pi * ((x / 86400) % 1) + ph)
        if s.kind is SensorKind.TANK_LEVEL:  # fill and draw-off over ~6 h between 3 and 7 m
            v = 5.0 + 2.0 * math.sin(2 * math.pi * x / 21600 + ph) + 0.01 * n
        elif s.kind is SensorKind.TEMPERATURE:
            v = 25 + 6 * day + 0.1 * n
        elif s.kind is SensorKind.GAS_COMBUSTIBLE:
            v = max(0.0, 1.0 + 0.5 * math.sin(x / 86400 + ph) + 0.3 * n)
        elif s.kind is SensorKind.GAS_TOXIC:
            lim = s.limits.h or 10
            v = max(0.0, lim * (0.05 + 0.02 * math.sin(x / 43200 + ph)) + lim * 0.01 * n)
        elif s.kind is SensorKind.OXYGEN:
            v = 20.9 + 0.05 * n
        elif s.kind is SensorKind.FLOW:  # feed flow follows the day shift
            v = max(0.0, 30 + 8 * day + 0.5 * n)
        elif s.kind is SensorKind.PRESSURE:
            v = 2.5 + 0.2 * day + 0.02 * n
        elif s.kind is SensorKind.DUST_DP:  # filters load for 30 min, then a cleaning pulse drops ΔP
            v = 600 + 700 * ((x / 1800 + ph) % 1) + 10 * n
        elif s.kind is SensorKind.DUST_HOPPER_TEMP:
            v = 35 + 3 * day + 0.2 * n
        elif s.kind is SensorKind.POWER:
            v = self._power(s, t, n)
        elif s.kind is SensorKind.RUN_STATE:
            v = 0.0 if s.enterprise in self.stopped else 1.0
        else:
            v = 0.0
        return self._overlay(s, t, v)

    def _power(self, s: SensorSpec, t: datetime, n: float) -> float:
        if s.enterprise in self.stopped:
            return 30 + 5 * abs(n)  # lighting and guards only
        local = t + timedelta(hours=8)
        weekend = local.weekday() >= 5
        shift = 8 <= local.hour < 20
        return (1200 if shift else 700) * (0.6 if weekend else 1.0) + 20 * n

    # --- scenarios ----------------------------------------------------------------------------
    def start(self, scenario: str, t: datetime, rng: random.Random) -> Incident:
        ents = [e for e in self.park.enterprises if e not in self.offline and e not in self.stopped]
        ent = rng.choice(ents) if ents else rng.choice(list(self.park.enterprises))
        dur = timedelta(minutes=20)
        p: dict[str, float] = {}
        if scenario == "gas_release":  # sudden release: two detectors past first level in a minute (the demo's opener)
            inc = Incident(scenario, ent, ("AT-201", "AT-202"), ("high", "vote"), t, t + timedelta(minutes=5),
                           hh_at=t + timedelta(minutes=1))
        elif scenario == "slow_leak":  # two neighbouring detectors see it, the second a little later
            inc = Incident(scenario, ent, ("AT-201", "AT-202"), ("trend", "high", "vote"), t, t + dur,
                           hh_at=t + timedelta(minutes=12.5))
        elif scenario == "tank_overfill":
            inc = Incident(scenario, ent, ("LT-101",), ("trend", "high"), t, t + dur, hh_at=t + timedelta(minutes=13))
        elif scenario == "runaway_temperature":
            inc = Incident(scenario, ent, ("TT-102",), ("rate", "trend", "high"), t, t + dur,
                           hh_at=t + timedelta(minutes=7))
        elif scenario == "stuck_detector":
            inc = Incident(scenario, ent, ("AT-203",), ("fault",), t, t + timedelta(hours=3))
        elif scenario == "gateway_offline":
            self.offline.add(ent)
            inc = Incident(scenario, ent, (), ("comm_loss",), t, t + timedelta(minutes=10))
        elif scenario == "production_during_stop":
            self.stopped.add(ent)  # ordered to stop; production resumes two minutes later regardless
            inc = Incident(scenario, ent, ("JT-001",), ("power",), t, t + timedelta(minutes=30))
        elif scenario == "hopper_heating":
            dusty = [e for e in ents if ("PDT-601" in {s.tag for s in self.park.sensors if s.enterprise == e})]
            ent = rng.choice(dusty) if dusty else ent
            inc = Incident(scenario, ent, ("TT-601",), ("trend", "high"), t, t + dur, hh_at=t + timedelta(minutes=14))
        elif scenario == "plant_trip":
            inc = Incident(scenario, ent, ("PT-401", "TT-101", "TT-102", "LT-102", "LT-103"), ("high", "low"), t,
                           t + timedelta(minutes=10))
        elif scenario == "chattering":
            inc = Incident(scenario, ent, ("LT-103",), ("high",), t, t + timedelta(minutes=5))
        else:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.active.append(_Active(inc, p))
        self.truth.append(inc)
        return inc

    def expire(self, t: datetime) -> list[Incident]:
        ended = [a.incident for a in self.active if t >= a.incident.end]
        for inc in ended:
            if inc.scenario == "gateway_offline":
                self.offline.discard(inc.enterprise)
            if inc.scenario == "production_during_stop":
                self.stopped.discard(inc.enterprise)
        self.active = [a for a in self.active if t < a.incident.end]
        return ended

    def _overlay(self, s: SensorSpec, t: datetime, v: float) -> float:
        for a in self.active:
            inc = a.incident
            if inc.enterprise != s.enterprise or t < inc.start:
                continue
            m = (t - inc.start).total_seconds() / 60  # minutes into the incident
            if inc.scenario == "gas_release" and s.tag in inc.tags and m < 4:
                lag = 0.0 if s.tag == inc.tags[0] else 0.15
                v = max(v, 0.0 if m < lag else min(55.0, 32 + 20 * (m - lag)))  # first level at once, HH ~1 min
            elif inc.scenario == "slow_leak" and s.tag in inc.tags:
                lag = 0 if s.tag == inc.tags[0] else 1.5
                v = max(v, 4 * max(0.0, m - lag))  # %LEL rising 4 per minute: HH (50) at ~12.5 min
            elif inc.scenario == "tank_overfill" and s.tag in inc.tags:
                v = 6.4 + 0.2 * m  # inlet left open: HH 9.0 at 13 min
            elif inc.scenario == "runaway_temperature" and s.tag in inc.tags:
                v = 30 + 0.6 * m * m  # accelerating: HH 60 at ~7 min
            elif inc.scenario == "stuck_detector" and s.tag in inc.tags:
                v = 1.25  # frozen output
            elif inc.scenario == "hopper_heating" and s.tag in inc.tags:
                v = 36 + 2.4 * m  # smouldering dust: HH 70 at ~14 min
            elif inc.scenario == "plant_trip" and s.tag in inc.tags and m >= 0.5:
                v = {"PT-401": 5.5, "TT-101": 52.0, "TT-102": 53.0, "LT-102": 0.9, "LT-103": 8.7}.get(s.tag, v)
            elif inc.scenario == "chattering" and s.tag in inc.tags:
                v = 8.6 if int(m * 6) % 2 == 0 else 8.3  # in and out of H every 10 s
            elif inc.scenario == "production_during_stop" and s.tag in inc.tags and m >= 2:
                v = 900.0
        return v
