"""The park as the running service sees it: a compiled, read-only view of the site file.

Stages look sensors up by (enterprise, tag) or by registry id, read each sensor's effective
limits (standard defaults applied), and ask which units sit above an enterprise.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from park.gases import lookup_gas, normalise_unit
from park.site import Contact, Enterprise, EnterpriseState, Sensor, SensorKind, Site, Town, Unit
from park.types import PARK_SCOPE, Level
from park.units import format_value, precision_for

DEFAULT_INTERVAL = timedelta(seconds=60)
TREND_HORIZON = timedelta(minutes=30)
TREND_WINDOW = timedelta(minutes=10)

# GB/T 50493-2019: combustible first level <= 25 %LEL, second <= 50 %LEL.
COMBUSTIBLE_LIMITS = (25.0, 50.0)
# Voting on a hazard source with two or more gas detectors of one class when the site file sets no
# vote_k: two of them at first level confirm a leak (docs/contract.md §3).
VOTE_K_DEFAULT = 2
# Common practice for oxygen: deficiency below 19.5 %VOL, enrichment above 23.5 %VOL.
OXYGEN_LIMITS = (19.5, 23.5)


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    hh: float | None = None
    h: float | None = None
    l: float | None = None  # noqa: E741
    ll: float | None = None

    def items(self) -> list[tuple[str, float]]:
        return [(k, v) for k in ("hh", "h", "l", "ll") if (v := getattr(self, k)) is not None]


def effective_limits(s: Sensor) -> EffectiveLimits:
    """The sensor's own limits over the standard defaults of its kind."""
    base: dict[str, float | None] = {}
    if s.kind is SensorKind.GAS_COMBUSTIBLE:
        base = {"h": COMBUSTIBLE_LIMITS[0], "hh": COMBUSTIBLE_LIMITS[1]}
    elif s.kind is SensorKind.OXYGEN:
        base = {"l": OXYGEN_LIMITS[0], "h": OXYGEN_LIMITS[1]}
    elif s.kind is SensorKind.GAS_TOXIC and s.gas:
        gas = lookup_gas(s.gas)
        unit = normalise_unit(s.unit or "mg/m3")
        if gas is not None and unit in ("mg/m3", "ppm"):
            first, second = gas.limits(unit)
            base = {"h": round(first, 4), "hh": round(second, 4)}
    if s.limits is not None:
        base.update({k: v for k, v in s.limits.model_dump().items() if v is not None})
    return EffectiveLimits(**base)


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor with everything the stages need, resolved once at start-up."""

    id: int
    enterprise: str
    town: str
    district: str
    tag: str
    kind: SensorKind
    name: str
    unit: str
    limits: EffectiveLimits
    gas: str | None = None
    hazard_source: str | None = None
    hazard_grade: int | None = None
    range_lo: float | None = None
    range_hi: float | None = None
    deadband: float | None = None
    on_delay: timedelta | None = None
    off_delay: timedelta | None = None
    interval: timedelta = DEFAULT_INTERVAL
    rise_per_min: float | None = None
    fall_per_min: float | None = None
    trend_horizon: timedelta | None = None
    trend_window: timedelta | None = None
    latching: bool = False
    in_service: bool = True
    precision: int = 2  # decimals shown to people (park.units)

    @property
    def display_name(self) -> str:
        return self.name or self.tag

    def show(self, value: float | None) -> str:
        """``value`` as people read it: rounded to this sensor's precision, with its unit."""
        return format_value(value, self.precision, self.unit)


@dataclass(frozen=True, slots=True)
class UnitInfo:
    code: str
    level: Level
    name: str
    parent: str | None
    contacts: tuple[Contact, ...]
    robot_key: str | None


@dataclass(slots=True)
class Park:
    """Read-only lookups over the site; build with :meth:`from_site`."""

    site: Site
    sensors: list[SensorSpec]
    units: dict[str, UnitInfo]
    enterprises: dict[str, Enterprise]
    by_key: dict[tuple[str, str], SensorSpec] = field(default_factory=dict)
    by_id: dict[int, SensorSpec] = field(default_factory=dict)

    @classmethod
    def from_site(cls, site: Site, ids: Sequence[int] | None = None) -> Park:
        """Compile ``site``; ``ids`` are the registry ids of its sensors in file order (else 1..N)."""
        sensors: list[SensorSpec] = []
        units: dict[str, UnitInfo] = {}
        enterprises: dict[str, Enterprise] = {}
        n = 0
        shared: dict[tuple[object, ...], dict[str, object]] = {}
        for d in site.districts:
            units[d.code] = _unit(d, "district", None)
            for t in d.towns:
                units[t.code] = _unit(t, "town", d.code)
                for e in t.enterprises:
                    units[e.code] = _unit(e, "enterprise", t.code)
                    enterprises[e.code] = e
                    grades = {h.code: h.grade for h in e.hazard_sources}
                    for s in e.sensors:
                        sid = ids[n] if ids is not None else n + 1
                        n += 1
                        sensors.append(_spec(sid, s, e.code, t.code, d.code, grades, shared))
        park = cls(site=site, sensors=sensors, units=units, enterprises=enterprises)
        park.by_key = {(s.enterprise, s.tag): s for s in sensors}
        park.by_id = {s.id: s for s in sensors}
        return park

    def without_sensor_models(self) -> Park:
        """This park with the site file's per-sensor models left out of ``site`` and ``enterprises``
        (every enterprise's ``sensors`` empty): what the running service keeps.

        Once compiled into :class:`SensorSpec` they are not read again, and at the national registry's
        size (440,000 sensors) they are some 330 MB of objects — a pydantic model each. Everything
        else of the site file is kept as it was; the specs and lookups are shared, not copied."""
        enterprises: dict[str, Enterprise] = {}

        def ent(e: Enterprise) -> Enterprise:
            enterprises[e.code] = slim = e.model_copy(update={"sensors": []})
            return slim

        def town(t: Town) -> Town:
            return t.model_copy(update={"enterprises": [ent(e) for e in t.enterprises]})

        districts = [d.model_copy(update={"towns": [town(t) for t in d.towns]}) for d in self.site.districts]
        return Park(site=self.site.model_copy(update={"districts": districts}), sensors=self.sensors,
                    units=self.units, enterprises=enterprises, by_key=self.by_key, by_id=self.by_id)

    def sensor(self, enterprise: str, tag: str) -> SensorSpec | None:
        return self.by_key.get((enterprise, tag))

    def chain(self, code: str) -> list[UnitInfo]:
        """The unit and every unit above it, nearest first (enterprise, town, district)."""
        out = []
        cur: str | None = code
        while cur is not None:
            u = self.units[cur]
            out.append(u)
            cur = u.parent
        return out

    def park_units(self) -> list[UnitInfo]:
        """Who answers for park-level alarms (``PARK_SCOPE``: an MQTT broker unreachable): the duty
        room (``channels.delivery.duty_room``) when the site file names one, else every district."""
        duty = self.site.channels.delivery.duty_room
        if duty is not None and duty in self.units:
            return [self.units[duty]]
        return [u for u in self.units.values() if u.level == "district"]

    def scope_name(self, code: str) -> str:
        """The name of an alarm's unit: the enterprise's, or the park's for ``PARK_SCOPE``."""
        if code == PARK_SCOPE:
            return self.site.site.name
        ent = self.enterprises.get(code)
        return ent.name if ent is not None else code

    def unit_at(self, enterprise: str, level: Level) -> UnitInfo:
        """The unit of ``level`` responsible for ``enterprise``."""
        for u in self.chain(enterprise):
            if u.level == level:
                return u
        raise KeyError(f"no {level} above {enterprise}")

    def in_scope(self, unit_code: str, enterprise: str) -> bool:
        """Whether ``unit_code``'s subtree contains ``enterprise`` (tokens, filters)."""
        return enterprise in self.units and any(u.code == unit_code for u in self.chain(enterprise))

    def enterprises_under(self, unit_code: str) -> list[str]:
        return [e for e in self.enterprises if self.in_scope(unit_code, e)]

    def enterprise_state(self, code: str) -> EnterpriseState:
        return self.enterprises[code].state

    def counts(self) -> dict[str, int]:
        return {
            "districts": sum(1 for u in self.units.values() if u.level == "district"),
            "towns": sum(1 for u in self.units.values() if u.level == "town"),
            "enterprises": len(self.enterprises),
            "hazard_sources": sum(len(e.hazard_sources) for e in self.enterprises.values()),
            "sensors": len(self.sensors),
        }

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sensors:
            out[s.kind.value] = out.get(s.kind.value, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _unit(u: Unit, level: Level, parent: str | None) -> UnitInfo:
    key = u.wecom_robot.key.get_secret_value() if u.wecom_robot else None
    return UnitInfo(u.code, level, u.name, parent, tuple(u.contacts), key)


# Sensor fields that differ from one sensor to the next; everything else is its configuration,
# which most sensors of a large registry share (the same kind with the same settings)
_OWN_FIELDS = frozenset({"tag", "name", "hazard_source"})


_CONFIG_FIELDS = operator.itemgetter(*(k for k in Sensor.model_fields if k not in _OWN_FIELDS))


def config_key(s: Sensor) -> tuple[object, ...]:
    """What a sensor's derived settings depend on, hashable: sensors with equal keys share them."""
    return _CONFIG_FIELDS(s.__dict__)


def _spec(
    sid: int, s: Sensor, ent: str, town: str, district: str, grades: Mapping[str, int],
    shared: dict[tuple[object, ...], dict[str, object]] | None = None,
) -> SensorSpec:
    """``shared`` caches the derived settings by :func:`config_key` (start-up with 440,000 sensors)."""
    if shared is None:
        derived = _derived(s)
    else:
        key = config_key(s)
        derived = shared.get(key)  # type: ignore[assignment]
        if derived is None:
            derived = shared[key] = _derived(s)
    return SensorSpec(
        id=sid,
        enterprise=ent,
        town=town,
        district=district,
        tag=s.tag,
        name=s.name or s.tag,
        hazard_source=s.hazard_source,
        hazard_grade=grades.get(s.hazard_source) if s.hazard_source else None,
        **derived,  # type: ignore[arg-type]
    )


def _derived(s: Sensor) -> dict[str, object]:
    """The SensorSpec fields that follow from the sensor's configuration alone."""
    return dict(
        kind=s.kind,
        unit=s.unit or s.kind.default_unit,
        limits=effective_limits(s),
        gas=s.gas,
        range_lo=s.range.lo if s.range else None,
        range_hi=s.range.hi if s.range else None,
        deadband=s.deadband,
        on_delay=s.on_delay,
        off_delay=s.off_delay,
        interval=s.interval or DEFAULT_INTERVAL,
        rise_per_min=s.rate.rise_per_min if s.rate else None,
        fall_per_min=s.rate.fall_per_min if s.rate else None,
        # trend early warning is on by default for analog process values; `trend: {enabled: false}` turns it off
        trend_horizon=(s.trend.horizon if s.trend else TREND_HORIZON) if _trend_on(s) else None,
        trend_window=(s.trend.window if s.trend else TREND_WINDOW) if _trend_on(s) else None,
        latching=bool(s.latching),
        in_service=s.in_service,
        precision=precision_for(s.kind, s.precision),
    )


def _trend_on(s: Sensor) -> bool:
    if s.trend is not None:
        return s.trend.enabled
    # dust-collector ΔP climbs every filter cycle by design: a projection would warn every half hour
    return not s.kind.is_boolean and s.kind not in (SensorKind.POWER, SensorKind.DUST_DP)


def sensor_keys(site: Site) -> Iterable[tuple[str, str]]:
    for _d, _t, e in site.walk():
        for s in e.sensors:
            yield e.code, s.tag
