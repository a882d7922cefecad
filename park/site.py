"""Typed models of the site file (docs/contract.md §2): district -> town -> enterprise -> sensors.

Structure and types are checked by pydantic (unknown keys forbidden); meaning — duplicate codes,
missing or disordered limits, unknown gases and hazard sources, unreachable contacts — is
checked by :func:`semantic_problems`, which reports each with the path of the offending node so
the loader can give its line.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, SecretStr

from park.durations import format_duration, parse_duration
from park.gases import lookup_gas, normalise_unit
from park.types import LEVELS, Level, Severity

Duration = Annotated[
    timedelta,
    BeforeValidator(lambda v: v if isinstance(v, timedelta) else parse_duration(v)),
    PlainSerializer(format_duration, return_type=str),
]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
# A tag is the enterprise's own point tag (位号); it becomes an MQTT topic level.
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^/+#\s]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SensorKind(enum.StrEnum):
    GAS_COMBUSTIBLE = "gas_combustible"
    GAS_TOXIC = "gas_toxic"
    OXYGEN = "oxygen"
    TANK_LEVEL = "tank_level"
    TEMPERATURE = "temperature"
    PRESSURE = "pressure"
    FLOW = "flow"
    DUST_DP = "dust_dp"  # dust-collector inlet/outlet differential pressure
    DUST_HOPPER_TEMP = "dust_hopper_temp"
    POWER = "power"  # whole-enterprise or line load, kW
    SPARK_DETECTOR = "spark_detector"  # boolean: 1 = spark seen
    FAULT_SIGNAL = "fault_signal"  # boolean: 1 = fault (airlock, ash discharge, interlock)
    RUN_STATE = "run_state"  # boolean: 1 = running (fans, dust removal, pumps); never alarms itself

    @property
    def is_gas(self) -> bool:
        return self in _GAS

    @property
    def is_boolean(self) -> bool:
        return self in _BOOLEAN

    @property
    def needs_limits(self) -> bool:
        return self not in _GAS and self not in _BOOLEAN

    @property
    def default_unit(self) -> str:
        return _DEFAULT_UNITS.get(self, "")

    @property
    def zh(self) -> str:
        return _KIND_ZH[self]


# sets, not tuples of members: asked once per sensor at start-up (a member lookup on the class is slow)
_GAS = frozenset({SensorKind.GAS_COMBUSTIBLE, SensorKind.GAS_TOXIC, SensorKind.OXYGEN})
_BOOLEAN = frozenset({SensorKind.SPARK_DETECTOR, SensorKind.FAULT_SIGNAL, SensorKind.RUN_STATE})

_DEFAULT_UNITS = {
    SensorKind.GAS_COMBUSTIBLE: "%LEL", SensorKind.GAS_TOXIC: "mg/m3", SensorKind.OXYGEN: "%VOL",
    SensorKind.TANK_LEVEL: "m", SensorKind.TEMPERATURE: "°C", SensorKind.PRESSURE: "MPa",
    SensorKind.FLOW: "m3/h", SensorKind.DUST_DP: "Pa", SensorKind.DUST_HOPPER_TEMP: "°C",
    SensorKind.POWER: "kW",
}
_KIND_ZH = {
    SensorKind.GAS_COMBUSTIBLE: "可燃气体", SensorKind.GAS_TOXIC: "有毒气体", SensorKind.OXYGEN: "氧气",
    SensorKind.TANK_LEVEL: "储罐液位", SensorKind.TEMPERATURE: "温度", SensorKind.PRESSURE: "压力",
    SensorKind.FLOW: "流量", SensorKind.DUST_DP: "除尘器压差", SensorKind.DUST_HOPPER_TEMP: "灰斗温度",
    SensorKind.POWER: "用电负荷", SensorKind.SPARK_DETECTOR: "火花探测", SensorKind.FAULT_SIGNAL: "故障信号",
    SensorKind.RUN_STATE: "运行状态",
}


class Limits(Strict):
    """Process alarm limits; any subset, strictly ordered ll < l < h < hh."""

    hh: float | None = None
    h: float | None = None
    l: float | None = None  # noqa: E741 — the DCS name of the low limit
    ll: float | None = None

    def ordered(self) -> list[tuple[str, float]]:
        return [(k, v) for k in ("ll", "l", "h", "hh") if (v := getattr(self, k)) is not None]


class InstrumentRange(Strict):
    lo: float
    hi: float


class RateLimit(Strict):
    """Rate-of-change limits, in the sensor's unit per minute."""

    rise_per_min: float | None = Field(default=None, gt=0)
    fall_per_min: float | None = Field(default=None, gt=0)


class TrendSettings(Strict):
    """Trend early warning: project the time to HH from a robust slope over ``window``."""

    horizon: Duration = timedelta(minutes=30)
    window: Duration = timedelta(minutes=10)
    enabled: bool = True


class Sensor(Strict):
    tag: Tag
    kind: SensorKind
    name: str | None = None
    unit: str | None = None
    gas: str | None = None
    hazard_source: Code | None = None
    limits: Limits | None = None
    range: InstrumentRange | None = None
    deadband: float | None = Field(default=None, ge=0)
    on_delay: Duration | None = None
    off_delay: Duration | None = None
    interval: Duration | None = None  # usual reporting interval; stale after a multiple of it
    rate: RateLimit | None = None
    trend: TrendSettings | None = None
    latching: bool | None = None
    in_service: bool = True
    # decimal places shown to people (board, SMS, WeCom); default per kind (park.units)
    precision: int | None = Field(default=None, ge=0, le=6)


class HazardSource(Strict):
    code: Code
    name: str
    grade: int = Field(ge=1, le=4)  # 重大危险源等级 1 (highest) – 4
    # Voting (docs/contract.md §3): k of the source's gas detectors of one class (combustible; toxic of one
    # gas) at or above first level confirm a leak. Unset: 2-out-of-N wherever the source has two or
    # more detectors of a class (park.model.VOTE_K_DEFAULT); 0 turns voting off for this source.
    vote_k: int | None = Field(default=None, ge=0)


ChannelName = Literal["sms", "wecom", "webhook"]


def _sms_only() -> list[ChannelName]:
    return ["sms"]


class Contact(Strict):
    name: str = Field(min_length=1)
    # written unquoted, YAML reads a phone number as an int; accept it as the digits it is
    phone: Annotated[
        str | None,
        BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
        Field(default=None, pattern=r"^\+?[0-9][0-9\-]{4,19}$"),
    ] = None
    wecom_user: str | None = None  # WeCom user id for application messages
    channels: list[ChannelName] = Field(default_factory=_sms_only)


class WecomRobot(Strict):
    key: SecretStr


class MapPoint(Strict):
    """Where a unit sits on the park's site plan (一张图), in the plan's own units (``site.map``)."""

    x: float = Field(ge=0)
    y: float = Field(ge=0)


class Unit(Strict):
    code: Code
    name: str = Field(min_length=1)
    contacts: list[Contact] = Field(default_factory=list)
    wecom_robot: WecomRobot | None = None
    map: MapPoint | None = None  # optional position on the site plan; without it the board lays out a grid


class EnterpriseState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # ordered to stop (停产): production load is a violation
    MAINTENANCE = "maintenance"  # 检修: process alarms suppressed by design


class Enterprise(Unit):
    hazard_sources: list[HazardSource] = Field(default_factory=list)
    sensors: list[Sensor] = Field(default_factory=list)
    state: EnterpriseState = EnterpriseState.RUNNING
    approved_load_kw: float | None = Field(default=None, gt=0)  # approved capacity, for power rules
    dust_explosion: bool = False  # 粉尘涉爆 enterprise


class Town(Unit):
    enterprises: list[Enterprise] = Field(default_factory=list)


class District(Unit):
    towns: list[Town] = Field(default_factory=list)


class EscalationStep(Strict):
    level: Level
    after: Duration


class EscalationPolicy(Strict):
    immediate: list[Level] = Field(min_length=1)
    then: list[EscalationStep] = Field(default_factory=list)
    repeat_every: Duration | None = None


def default_escalation() -> dict[Severity, EscalationPolicy]:
    """The contract's example policy: red reaches the town at once and the district in 5 min."""
    m = timedelta(minutes=1)
    return {
        Severity.RED: EscalationPolicy(
            immediate=["enterprise", "town"], then=[EscalationStep(level="district", after=5 * m)],
            repeat_every=5 * m,
        ),
        Severity.ORANGE: EscalationPolicy(
            immediate=["enterprise"],
            then=[EscalationStep(level="town", after=10 * m), EscalationStep(level="district", after=30 * m)],
            repeat_every=10 * m,
        ),
        Severity.YELLOW: EscalationPolicy(
            immediate=["enterprise"], then=[EscalationStep(level="town", after=30 * m)]
        ),
        Severity.BLUE: EscalationPolicy(immediate=["enterprise"]),
    }


class SmsHttp(Strict):
    provider: Literal["http"]
    url: str
    token: SecretStr | None = None  # sent as a Bearer token when set
    timeout: Duration = timedelta(seconds=5)


class SmsAliyun(Strict):
    provider: Literal["aliyun"]
    access_key_id: str
    access_key_secret: SecretStr
    sign_name: str
    template_code: str
    endpoint: str = "https://dysmsapi.aliyuncs.com"
    region_id: str = "cn-hangzhou"
    timeout: Duration = timedelta(seconds=5)


class SmsTencent(Strict):
    provider: Literal["tencent"]
    secret_id: str
    secret_key: SecretStr
    sdk_app_id: str
    sign_name: str
    template_id: str
    endpoint: str = "https://sms.tencentcloudapi.com"
    region: str = "ap-guangzhou"
    timeout: Duration = timedelta(seconds=5)


SmsChannel = Annotated[SmsHttp | SmsAliyun | SmsTencent, Field(discriminator="provider")]


class WecomChannel(Strict):
    base_url: str = "https://qyapi.weixin.qq.com"
    corp_id: str | None = None  # application messages (to contacts' wecom_user) need these three
    agent_id: int | None = None
    secret: SecretStr | None = None
    robot_per_minute: int = Field(default=20, ge=1)  # WeCom's group-robot limit
    timeout: Duration = timedelta(seconds=5)


class WebhookChannel(Strict):
    url: str
    secret: SecretStr | None = None  # HMAC-SHA256 signature header when set
    timeout: Duration = timedelta(seconds=5)


# Message parts an operator may rewrite (string.Template text; alerting.messages holds the defaults).
TEMPLATE_NAMES = ("title", "body", "time", "step_immediate", "step_upgrade", "step_then", "step_repeat",
                  "step_cleared", "step_resolved", "step_flood", "step_unreachable", "ack")


class Delivery(Strict):
    """How hard a message is pushed (docs/contract.md §3: never abandoned while its alarm is unacknowledged)."""

    retry_max: Duration = timedelta(minutes=2)  # back-off cap between attempts
    fallback_after: int = Field(default=3, ge=1)  # failures on one channel before the contact's next is tried
    unreachable_after: Duration = timedelta(minutes=10)  # undelivered this long: the duty room is told
    give_up_after: Duration = timedelta(hours=24)  # only for messages of acknowledged or closed alarms
    duty_room: str | None = None  # unit code of the park duty room; default: the enterprise's town


class Channels(Strict):
    sms: SmsChannel | None = None
    wecom: WecomChannel = Field(default_factory=WecomChannel)
    webhook: WebhookChannel | None = None
    console: bool = False  # also print every message to the log (the demo's channel)
    templates: dict[str, str] = Field(default_factory=dict)  # e.g. {title: "【${colour}】${enterprise}"}
    delivery: Delivery = Field(default_factory=Delivery)


class DatabaseSection(Strict):
    url: SecretStr | None = None


class MqttSection(Strict):
    url: str | None = None
    # several brokers (gateways publish to whichever they reach): one persistent session on each
    urls: list[str] | None = Field(default=None, min_length=1)
    client_id: str | None = None
    prefix: str = "hw/v1"
    username: str | None = None
    password: SecretStr | None = None


class HttpSection(Strict):
    addr: str | None = None
    public_url: str | None = None  # base of acknowledgement links in messages
    # reverse proxies (addresses or networks) whose X-Forwarded-For / -Proto headers are believed;
    # from anyone else those headers are ignored
    trusted_proxies: list[str] = Field(default_factory=list)
    # /metrics, /openapi.json and /docs: open when neither is set (fine on loopback); with
    # metrics_token they need "Authorization: Bearer <token>" (an API token also opens the docs),
    # with ops_from only clients from those networks reach them without the token
    metrics_token: SecretStr | None = None
    ops_from: list[str] = Field(default_factory=list)
    max_streams_per_token: int = Field(default=20, ge=1, le=1000)  # open live streams (boards) per API token


class Retention(Strict):
    readings: Duration = timedelta(days=730)  # regulation asks for ≥ 30 days; parks keep years
    rejects: Duration = timedelta(days=30)


class SeverityDefaults(BaseModel):
    """Which colour each condition raises (configurable: provinces differ, see docs/alarms.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_level: Severity = Severity.YELLOW  # H / L, gas first level
    second_level: Severity = Severity.ORANGE  # HH / LL, gas second level
    toxic_second_level: Severity = Severity.RED
    hh_on_major_hazard: Severity = Severity.RED  # HH/LL on a grade 1–2 major hazard source
    trend: Severity = Severity.BLUE
    rate: Severity = Severity.YELLOW
    stale: Severity = Severity.BLUE
    fault: Severity = Severity.YELLOW
    comm_loss: Severity = Severity.ORANGE
    vote: Severity = Severity.RED
    power: Severity = Severity.ORANGE
    spark: Severity = Severity.RED
    fault_signal: Severity = Severity.YELLOW
    clock: Severity = Severity.BLUE  # a gateway's clock off by more than clock_skew_max
    broker: Severity = Severity.ORANGE  # an MQTT broker unreachable longer than broker_unreachable_after


class AlarmManagement(BaseModel):
    """ISA-18.2 / EEMUA 191 nuisance controls and rule parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: SeverityDefaults = Field(default_factory=SeverityDefaults)
    deadband_fraction: float = Field(default=0.02, ge=0, le=0.5)  # of the limit, when a sensor sets none
    on_delay: Duration = timedelta(0)
    off_delay: Duration = timedelta(seconds=10)
    stale_multiple: float = Field(default=5.0, gt=1)  # stale after this many usual intervals
    comm_loss_after: Duration = timedelta(minutes=5)  # nothing from an enterprise this long
    flatline_after: Duration = timedelta(hours=2)  # identical values this long = stuck instrument
    trend_horizon: Duration = timedelta(minutes=30)
    trend_window: Duration = timedelta(minutes=10)
    trend_min_points: int = Field(default=6, ge=3)
    chatter_count: int = Field(default=3, ge=2)  # ISA-18.2: 3+ in a minute
    chatter_window: Duration = timedelta(minutes=1)
    chatter_hold: Duration = timedelta(minutes=2)  # a chattering alarm clears only after this long normal
    flood_count: int = Field(default=10, ge=2)  # 10+ in 10 minutes
    flood_window: Duration = timedelta(minutes=10)
    power_stopped_fraction: float = Field(default=0.3, gt=0, le=1)  # of the usual load for that hour
    power_min_load_kw: float = Field(default=50.0, ge=0)  # below this a stopped plant is idle, not producing
    power_learning_weeks: int = Field(default=4, ge=1)
    # Time (docs/contract.md §8). A gateway clock further than this from hazardwatch's raises a blue alarm.
    clock_skew_max: Duration = timedelta(minutes=2)
    # An MQTT broker hazardwatch cannot reach (or that refuses it) this long raises an orange alarm to
    # the park, cleared when the session is back.
    broker_unreachable_after: Duration = timedelta(seconds=30)
    # An alarm raised from a reading that arrived later than this after its own time is marked
    # backfilled (store-and-forward, 断点续传), with the delay, so people know it is late news.
    backfill_after: Duration = timedelta(minutes=2)
    # How often the rule stage saves what it has learned (trend samples, baselines, liveness).
    snapshot_every: Duration = timedelta(minutes=1)


ClockTime = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class SitePlan(Strict):
    """The site plan the board draws enterprises on (一张图): its size in the units of ``map: {x, y}``."""

    width: float = Field(default=1000, gt=0)
    height: float = Field(default=600, gt=0)


class SiteInfo(Strict):
    name: str = Field(min_length=1)
    timezone: str = "Asia/Shanghai"
    # duty-room shifts (交接班): the local times at which a shift starts, e.g. ["08:00", "20:00"]
    shifts: list[ClockTime] = Field(default_factory=lambda: ["08:00", "20:00"], min_length=1, max_length=12)
    map: SitePlan = Field(default_factory=SitePlan)


class Site(Strict):
    site: SiteInfo
    districts: list[District] = Field(min_length=1)
    escalation: dict[Severity, EscalationPolicy] = Field(default_factory=default_escalation)
    channels: Channels = Field(default_factory=Channels)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    http: HttpSection = Field(default_factory=HttpSection)
    retention: Retention = Field(default_factory=Retention)
    alarm_management: AlarmManagement = Field(default_factory=AlarmManagement)

    def walk(self) -> Iterator[tuple[District, Town, Enterprise]]:
        for d in self.districts:
            for t in d.towns:
                for e in t.enterprises:
                    yield d, t, e


Loc = tuple[str | int, ...]


def semantic_problems(site: Site) -> Iterator[tuple[Loc, str]]:
    """Meaning checks pydantic cannot make: each is (path in the file, what to fix)."""
    seen_units: dict[str, Loc] = {}

    def unit(u: Unit, loc: Loc) -> Iterator[tuple[Loc, str]]:
        if u.code in seen_units:
            yield (*loc, "code"), (
                f"duplicate unit code '{u.code}' (also used at {_loc_text(seen_units[u.code])}); "
                "codes must be unique across districts, towns and enterprises"
            )
        else:
            seen_units[u.code] = loc
        names: dict[str, int] = {}
        addresses: dict[str, int] = {}
        for i, c in enumerate(u.contacts):
            yield from _contact_problems(site, c, (*loc, "contacts", i))
            # one person, one entry: two entries with one name (or one phone) would be told as one
            if c.name in names:
                yield (*loc, "contacts", i, "name"), (
                    f"two contacts named {c.name} in unit {u.code} (also contact #{names[c.name] + 1}); "
                    "give each person one entry with a distinct name")
            else:
                names[c.name] = i
            for addr in (c.phone, c.wecom_user and f"wecom:{c.wecom_user}"):
                if addr and addr in addresses and addresses[addr] != i:
                    yield (*loc, "contacts", i), (
                        f"contact {c.name} has the same phone or WeCom user as contact #{addresses[addr] + 1} "
                        f"in unit {u.code}; list each person once")
                elif addr:
                    addresses[addr] = i

    for di, d in enumerate(site.districts):
        dl: Loc = ("districts", di)
        yield from unit(d, dl)
        for ti, t in enumerate(d.towns):
            tl: Loc = (*dl, "towns", ti)
            yield from unit(t, tl)
            for ei, e in enumerate(t.enterprises):
                el: Loc = (*tl, "enterprises", ei)
                yield from unit(e, el)
                yield from _enterprise_problems(e, el)

    for name in site.channels.templates:
        if name not in TEMPLATE_NAMES:
            yield ("channels", "templates", name), (
                f"unknown message template '{name}'; templates are: {', '.join(TEMPLATE_NAMES)}")
    for sev, pol in site.escalation.items():
        pl: Loc = ("escalation", sev.value)
        levels = list(pol.immediate) + [s.level for s in pol.then]
        if len(set(levels)) != len(levels):
            yield pl, "a level is named twice in this policy; name each of enterprise/town/district once"
        afters = [s.after for s in pol.then]
        if afters != sorted(afters):
            yield (*pl, "then"), "escalation steps must be listed in order of 'after'"
        if pol.repeat_every is not None and pol.repeat_every < timedelta(minutes=1):
            yield (*pl, "repeat_every"), "repeat_every under 1m would flood people; use 1m or more"
    if len(set(site.site.shifts)) != len(site.site.shifts):
        yield ("site", "shifts"), "a shift start time is listed twice; give each start once, e.g. ['08:00', '20:00']"
    yield from _http_problems(site)
    if site.mqtt.url is not None and site.mqtt.urls is not None:
        yield ("mqtt", "urls"), ("mqtt.url 与 mqtt.urls 只能写一个（write either url for one broker or urls for "
                                 "several, not both）")
    duty = site.channels.delivery.duty_room
    if duty is not None and duty not in seen_units:
        yield ("channels", "delivery", "duty_room"), (
            f"duty_room names unit '{duty}', which is not in this file; name a district, town or enterprise code")
    missing = [s.value for s in Severity if s not in site.escalation]
    if missing:
        yield ("escalation",), (
            f"no policy for severity {', '.join(missing)}; give every one of red, orange, yellow, blue"
        )


def _http_problems(site: Site) -> Iterator[tuple[Loc, str]]:
    import ipaddress

    for key in ("trusted_proxies", "ops_from"):
        for i, net in enumerate(getattr(site.http, key)):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                yield ("http", key, i), f"'{net}' is not an address or network; write e.g. 10.0.0.5 or 10.0.0.0/24"
    seen: set[str] = set()
    for d, t, e in site.walk():
        for u in (d, t, e):
            if u.code in seen:
                continue
            seen.add(u.code)
            if u.map is not None and (u.map.x > site.site.map.width or u.map.y > site.site.map.height):
                yield ("site", "map"), (f"{u.code} is placed at ({u.map.x:g}, {u.map.y:g}), outside the site plan "
                                        f"({site.site.map.width:g} × {site.site.map.height:g}); "
                                        "enlarge site.map or move it")


def _contact_problems(site: Site, c: Contact, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if not c.channels:
        yield (*loc, "channels"), f"contact {c.name} has no channels; list at least one of sms, wecom"
    for ch in c.channels:
        if ch == "sms" and not c.phone:
            yield loc, f"contact {c.name} is to get SMS but has no phone; add phone: or remove sms"
        if ch == "sms" and site.channels.sms is None:
            yield loc, f"contact {c.name} uses sms but channels.sms is not configured"
        if ch == "wecom" and not c.wecom_user:
            yield loc, f"contact {c.name} is to get WeCom messages but has no wecom_user; add it"
        if ch == "wecom" and not (site.channels.wecom.corp_id and site.channels.wecom.secret):
            yield loc, (
                f"contact {c.name} uses wecom but channels.wecom has no corp_id/agent_id/secret "
                "for application messages"
            )
        if ch == "webhook" and site.channels.webhook is None:
            yield loc, f"contact {c.name} uses webhook but channels.webhook is not configured"


def _enterprise_problems(e: Enterprise, el: Loc) -> Iterator[tuple[Loc, str]]:
    sources: dict[str, int] = {}
    for hi, hs in enumerate(e.hazard_sources):
        if hs.code in sources:
            yield (*el, "hazard_sources", hi, "code"), (
                f"duplicate hazard source code '{hs.code}' in enterprise {e.code}"
            )
        sources[hs.code] = hi
    tags: dict[str, int] = {}
    for si, s in enumerate(e.sensors):
        sl: Loc = (*el, "sensors", si)
        if s.tag in tags:
            yield (*sl, "tag"), (
                f"duplicate tag '{s.tag}' in enterprise {e.code} (first at sensor #{tags[s.tag] + 1}); "
                "tags must be unique inside an enterprise"
            )
        else:
            tags[s.tag] = si
        if s.hazard_source is not None and s.hazard_source not in sources:
            known = ", ".join(sources) or "none defined"
            yield (*sl, "hazard_source"), (
                f"unknown hazard source '{s.hazard_source}' (this enterprise has: {known})"
            )
        yield from _sensor_problems(s, sl)


def _sensor_problems(s: Sensor, sl: Loc) -> Iterator[tuple[Loc, str]]:
    if s.kind is SensorKind.GAS_TOXIC:
        if not s.gas:
            yield sl, f"toxic gas sensor {s.tag} needs gas: (e.g. H2S, CO, NH3, Cl2)"
        elif lookup_gas(s.gas) is None:
            from park.gases import GASES

            yield (*sl, "gas"), (
                f"unknown gas '{s.gas}'; known: {', '.join(GASES)} — or give limits: for this sensor"
            )
        elif s.limits is None and normalise_unit(s.unit or "mg/m3") not in ("mg/m3", "ppm"):
            yield (*sl, "unit"), (
                f"toxic gas unit '{s.unit}' has no standard limit; use mg/m3 or ppm, or give limits:"
            )
    elif s.gas is not None:
        yield (*sl, "gas"), f"gas: only applies to gas_toxic sensors, not {s.kind.value}"
    if s.kind.is_boolean and s.limits is not None:
        yield (*sl, "limits"), f"{s.kind.value} is a switch (true/false); it takes no limits"
    if s.kind.needs_limits and (s.limits is None or not s.limits.ordered()):
        yield sl, (
            f"sensor {s.tag} of kind {s.kind.value} has no standard default limits; "
            "add limits: {hh: …, h: …, l: …, ll: …} (any of them)"
        )
    if s.limits is not None:
        vals = s.limits.ordered()
        for (ka, va), (kb, vb) in itertools.pairwise(vals):
            if not va < vb:
                yield (*sl, "limits"), (
                    f"limits out of order: {ka}={va:g} must be below {kb}={vb:g} (ll < l < h < hh)"
                )
    if s.range is not None and not s.range.lo < s.range.hi:
        yield (*sl, "range"), f"instrument range lo={s.range.lo:g} must be below hi={s.range.hi:g}"


def _loc_text(loc: Loc) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def loc_text(loc: Loc) -> str:
    """``('districts', 0, 'code')`` -> ``districts[0].code``."""
    return _loc_text(loc)


__all__ = [
    "LEVELS",
    "Channels",
    "Contact",
    "District",
    "Duration",
    "Enterprise",
    "EnterpriseState",
    "EscalationPolicy",
    "EscalationStep",
    "HazardSource",
    "Limits",
    "Sensor",
    "SensorKind",
    "Site",
    "Town",
    "Unit",
    "default_escalation",
    "semantic_problems",
]
