"""The site-file reference, generated from the pydantic models in ``park.site``.

Every key, its type, its default and what it means. A key's text comes from :data:`NOTES`
(``Model.field``), else the field's ``description``, else the comment on its line in the source;
:func:`undocumented` lists keys with none of them, and a test keeps that list empty.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from park import site as S
from park.durations import format_duration
from park.gases import GASES
from park.model import COMBUSTIBLE_LIMITS, DEFAULT_INTERVAL, OXYGEN_LIMITS

NOTES: dict[str, str] = {
    "Site.site": "the park's name and time zone",
    "Site.districts": "the administrative tree: district → town → enterprise",
    "Site.escalation": "per severity (red, orange, yellow, blue): who is told at once, who later, how often "
                       "reminded; every severity needs a policy",
    "Site.channels": "how messages leave: SMS provider, WeCom, webhook, message templates",
    "Site.database": "PostgreSQL / TimescaleDB connection (HAZARDWATCH_DATABASE_URL wins)",
    "Site.mqtt": "broker connection and topic prefix (HAZARDWATCH_MQTT_URL wins)",
    "Site.http": "HTTP API address and the public base URL of acknowledgement links",
    "Site.retention": "how long readings and rejected messages are kept",
    "Site.alarm_management": "ISA-18.2 nuisance controls and rule parameters for the whole park",
    "SiteInfo.name": "shown on the board, in messages and dashboards",
    "SiteInfo.timezone": "time zone for times shown to people (stored times are UTC)",
    "SiteInfo.map": "the site plan the board draws enterprises on (一张图)",
    "SitePlan.width": "width of the site plan, in the units of the units' map: {x, y}",
    "SitePlan.height": "height of the site plan, in the same units",
    "MapPoint.x": "position on the site plan, from the left",
    "MapPoint.y": "position on the site plan, from the top",
    "HttpSection.ops_from": "networks (e.g. 10.0.0.0/8) that reach /metrics, /openapi.json and /docs without "
                            "metrics_token",
    "Unit.code": "unique across all districts, towns and enterprises; an enterprise's code is its MQTT "
                 "topic level and its broker account name",
    "Unit.name": "shown in messages and on the board",
    "Unit.contacts": "people told when this unit's level is notified",
    "Unit.wecom_robot": "a WeCom group robot told with the contacts (optional)",
    "District.towns": "towns, streets or park areas (属地) of the district",
    "Town.enterprises": "enterprises of the town",
    "Enterprise.hazard_sources": "major hazard sources (重大危险源) of the enterprise",
    "Enterprise.sensors": "the enterprise's monitored points",
    "Enterprise.state": "running / stopped (停产) / maintenance (检修); process alarms of a stopped or "
                        "maintained enterprise are suppressed, life-safety alarms never",
    "Enterprise.approved_load_kw": "approved capacity (核定产能) as load, kW; power above it alarms",
    "Enterprise.dust_explosion": "a dust-explosion enterprise (粉尘涉爆)",
    "HazardSource.code": "unique inside the enterprise; sensors name it in hazard_source",
    "HazardSource.name": "shown in vote alarms",
    "HazardSource.grade": "重大危险源等级 1 (highest) – 4; HH/LL on grade 1–2 raise red",
    "HazardSource.vote_k": "k of the source's gas detectors of one class (combustible; toxic of one gas) at or "
                           "above first level confirm a leak (a red vote alarm); unset: 2-out-of-N wherever the "
                           "source has two or more detectors of a class; 0 turns voting off",
    "Contact.name": "the person or duty room; shown in the audit",
    "Contact.phone": "mobile number for SMS, digits (quote it in YAML)",
    "Contact.wecom_user": "WeCom user id for application messages",
    "Contact.channels": "tried in this order: sms, wecom, webhook",
    "WecomRobot.key": "the robot's webhook key (secret; may be ${ENV})",
    "Sensor.tag": "the enterprise's own point tag (位号), unique inside the enterprise; the MQTT payload's tag",
    "Sensor.kind": "what the sensor measures; decides default limits and rules (see the kinds table)",
    "Sensor.name": "shown in messages and on the board",
    "Sensor.unit": "unit of the values the gateway sends (default per kind)",
    "Sensor.gas": "gas_toxic only: the gas (formula or Chinese name, see the gas table)",
    "Sensor.hazard_source": "code of the enterprise's hazard source the sensor belongs to",
    "Sensor.limits": "process alarm limits in the sensor's unit; gas kinds default to GB/T 50493",
    "Sensor.range": "instrument range; readings outside it are an instrument fault",
    "Sensor.deadband": "in the sensor's unit: an alarm clears only this far back inside its limit "
                       "(default: deadband_fraction of the limit)",
    "Sensor.on_delay": "the condition must last this long (on the readings' time) before the alarm is raised",
    "Sensor.off_delay": "the condition must be gone this long before the alarm clears",
    "Sensor.interval": "usual reporting interval; stale after stale_multiple × this without a reading "
                       "(default 60s)",
    "Sensor.rate": "rate-of-change alarm limits",
    "Sensor.trend": "trend early warning (time to HH projected from the recent slope)",
    "Sensor.latching": "an alarm stays until reset by an operator (spark detectors latch by default)",
    "Sensor.in_service": "false: out of service, not judged",
    "Limits.hh": "high-high (second level)",
    "Limits.h": "high (first level)",
    "Limits.l": "low (first level)",
    "Limits.ll": "low-low (second level)",
    "InstrumentRange.lo": "lowest value the instrument can read",
    "InstrumentRange.hi": "highest value the instrument can read",
    "RateLimit.rise_per_min": "alarm when the value rises faster than this, in the sensor's unit per minute",
    "RateLimit.fall_per_min": "alarm when the value falls faster than this, in the sensor's unit per minute",
    "TrendSettings.horizon": "warn when HH is projected within this time",
    "TrendSettings.window": "the recent readings the slope is taken over",
    "TrendSettings.enabled": "false turns the trend warning off for this sensor",
    "EscalationPolicy.immediate": "levels told when the alarm is raised: enterprise, town, district",
    "EscalationPolicy.then": "later steps, each told if still unacknowledged `after` that long since the raise",
    "EscalationPolicy.repeat_every": "remind the levels already told at this interval until acknowledged "
                                     "(1m or more)",
    "EscalationStep.level": "enterprise, town or district",
    "EscalationStep.after": "counted from the moment hazardwatch raised the alarm",
    "Channels.sms": "the SMS provider: http, aliyun or tencent",
    "Channels.wecom": "WeCom (企业微信): robot base URL and application credentials",
    "Channels.webhook": "a JSON POST of every message to another platform",
    "Channels.console": "also print every message to the log (the demo's channel)",
    "Channels.delivery": "how hard a message is pushed: retries, fallback to the next channel, telling the duty "
                         "room about contacts not reached",
    "Channels.templates": "rewrite message parts (string.Template text); names: "
                          + ", ".join(S.TEMPLATE_NAMES),
    "SmsHttp.provider": "http",
    "SmsHttp.url": 'POST {"phone", "text", "id"} here; any 2xx is success',
    "SmsHttp.token": "sent as a Bearer token when set (secret)",
    "SmsHttp.timeout": "one request's timeout",
    "SmsAliyun.provider": "aliyun",
    "SmsAliyun.access_key_id": "AccessKey ID",
    "SmsAliyun.access_key_secret": "AccessKey secret (secret)",
    "SmsAliyun.sign_name": "approved SMS signature (签名)",
    "SmsAliyun.template_code": "approved template code; the message is passed as its parameters",
    "SmsAliyun.endpoint": "SendSms endpoint",
    "SmsAliyun.region_id": "region",
    "SmsAliyun.timeout": "one request's timeout",
    "SmsTencent.provider": "tencent",
    "SmsTencent.secret_id": "SecretId",
    "SmsTencent.secret_key": "SecretKey (secret)",
    "SmsTencent.sdk_app_id": "SmsSdkAppId",
    "SmsTencent.sign_name": "approved SMS signature (签名)",
    "SmsTencent.template_id": "approved template id",
    "SmsTencent.endpoint": "SendSms endpoint",
    "SmsTencent.region": "region",
    "SmsTencent.timeout": "one request's timeout",
    "WecomChannel.base_url": "WeCom API base (a proxy inside the park network, if any)",
    "WecomChannel.corp_id": "corp id, for application messages to contacts' wecom_user",
    "WecomChannel.agent_id": "application agent id",
    "WecomChannel.secret": "application secret (secret)",
    "WecomChannel.robot_per_minute": "messages per robot per minute (WeCom allows 20)",
    "WecomChannel.timeout": "one request's timeout",
    "WebhookChannel.url": "receives every message as JSON",
    "WebhookChannel.secret": "signs each body with HMAC-SHA256 in a header (secret)",
    "WebhookChannel.timeout": "one request's timeout",
    "DatabaseSection.url": "postgresql://user:password@host:5432/db (secret; may be ${ENV})",
    "MqttSection.url": "mqtt://host:1883 or mqtts://host:8883",
    "MqttSection.urls": "several brokers, e.g. [mqtt://mq-a:1883, mqtt://mq-b:1883]: two persistent sessions "
                        "on each, live and history (instead of url; HAZARDWATCH_MQTT_URL may list them "
                        "comma-separated)",
    "MqttSection.client_id": "the persistent session's client id (default: hazardwatch-<database name>, the "
                             "same on every instance); keep it stable, so a restart resumes the broker's "
                             "queue. Re-sent history (…/backfill) has a session of its own: this id + "
                             "-backfill",
    "MqttSection.prefix": "topic prefix devices publish under",
    "MqttSection.username": "hazardwatch's broker account",
    "MqttSection.password": "its password (secret)",
    "HttpSection.addr": "host:port the API and board listen on (default 127.0.0.1:8080)",
    "HttpSection.public_url": "base of acknowledgement links in messages, as people's phones reach it",
    "Retention.readings": "readings older than this are dropped (regulation asks for ≥ 30 days)",
    "Retention.rejects": "rejected messages kept for inspection this long",
    "SeverityDefaults.first_level": "H / L and gas first level",
    "SeverityDefaults.second_level": "HH / LL and combustible gas second level",
    "SeverityDefaults.toxic_second_level": "toxic gas second level",
    "SeverityDefaults.hh_on_major_hazard": "HH / LL on a grade 1–2 major hazard source",
    "SeverityDefaults.trend": "trend early warning",
    "SeverityDefaults.rate": "rate of change",
    "SeverityDefaults.stale": "a sensor silent for stale_multiple × its interval",
    "SeverityDefaults.fault": "instrument fault (bad quality, out of range, flat line)",
    "SeverityDefaults.comm_loss": "nothing from an enterprise for comm_loss_after",
    "SeverityDefaults.vote": "k-of-n gas detectors confirm a leak",
    "SeverityDefaults.power": "power rules (production while stopped, over capacity)",
    "SeverityDefaults.spark": "spark detected",
    "SeverityDefaults.fault_signal": "a fault signal (airlock, ash discharge, interlock)",
    "SeverityDefaults.broker": "an MQTT broker unreachable for broker_unreachable_after",
    "AlarmManagement.severity": "which colour each condition raises",
    "AlarmManagement.deadband_fraction": "deadband as a fraction of the limit, for sensors that set none",
    "AlarmManagement.on_delay": "default on-delay (on the readings' time)",
    "AlarmManagement.off_delay": "default off-delay",
    "AlarmManagement.stale_multiple": "a sensor is stale after this many usual intervals without a reading "
                                      "(on arrival time at hazardwatch)",
    "AlarmManagement.comm_loss_after": "nothing from an enterprise this long (arrival time) = communication loss",
    "AlarmManagement.broker_unreachable_after": "an MQTT broker unreachable this long raises an alarm to the park "
                                                "(cleared when its session is back)",
    "AlarmManagement.flatline_after": "identical values this long = stuck instrument",
    "AlarmManagement.trend_horizon": "default trend horizon",
    "AlarmManagement.trend_window": "default trend window",
    "AlarmManagement.trend_min_points": "readings needed in the window before a trend is judged",
    "AlarmManagement.chatter_count": "this many raises of one alarm within chatter_window = chattering "
                                     "(ISA-18.2: 3 a minute)",
    "AlarmManagement.chatter_window": "window for chatter_count",
    "AlarmManagement.chatter_hold": "a chattering alarm clears only after this long normal",
    "AlarmManagement.flood_count": "this many alarms within flood_window = a flood (EEMUA 191: 10 in 10 min); "
                                   "messages are then folded into summaries",
    "AlarmManagement.flood_window": "window for flood_count",
    "AlarmManagement.power_stopped_fraction": "a stopped enterprise drawing more than this fraction of its "
                                              "usual load for that hour is producing",
    "AlarmManagement.power_min_load_kw": "below this load a stopped plant is idle, not producing (kW)",
    "AlarmManagement.power_learning_weeks": "weeks of history the usual load is learned from",
}

_SECTIONS: list[tuple[str, type[BaseModel]]] = []


def _comments(cls: type) -> dict[str, str]:
    """The comment of each ``field: …`` line of a class's own source: on its line, or just above it."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in src.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"\s+(\w+)\s*:[^#]*(?:#\s*(.+))?$", line)
        if m and not stripped.startswith(("def ", "class ", "@", '"""')):
            inline = re.sub(r"^noqa:\s*\S+\s*(—\s*)?", "", m.group(2) or "").strip()
            text = inline or " ".join(above).strip()
            if text:
                out[m.group(1)] = text
        above = []
    return out


def describe(cls: type[BaseModel], name: str, info: FieldInfo) -> str:
    for klass in cls.__mro__:
        key = f"{klass.__name__}.{name}"
        if key in NOTES:
            return NOTES[key]
    if info.description:
        return info.description
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, BaseModel) and name in _comments(klass):
            return _comments(klass)[name]
    return ""


def _strip_optional(t: Any) -> Any:
    args = get_args(t)
    if get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
    return t


def type_text(t: Any, info: FieldInfo | None = None) -> str:
    t = _strip_optional(t)
    origin = get_origin(t)
    if origin is typing.Annotated:
        return type_text(get_args(t)[0])
    if origin is Literal:
        return " / ".join(f"`{a}`" for a in get_args(t))
    if origin is list:
        return f"list of {type_text(get_args(t)[0])}"
    if origin is dict:
        k, v = get_args(t)
        return f"map {type_text(k)} → {type_text(v)}"
    if origin in (typing.Union, types.UnionType):
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in get_args(t)):
            return "section, by `provider`"
        return " or ".join(type_text(a) for a in get_args(t))
    if t is timedelta:
        return "duration"
    if t is SecretStr:
        return "secret"
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return " / ".join(f"`{m.value}`" for m in t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return "section"
    if t is str and info is not None:
        pat = next((m.pattern for m in info.metadata if getattr(m, "pattern", None)), None)
        if pat:
            return "code" if pat.startswith("^[A-Za-z0-9]") else "text"
    return {str: "text", int: "integer", float: "number", bool: "true / false"}.get(t, str(t))


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        v = info.default_factory()  # type: ignore[call-arg]
    else:
        v = info.default
    if v is PydanticUndefined or v is None:
        return "—"
    if isinstance(v, BaseModel):
        return "(section)"
    if isinstance(v, dict) and v and all(isinstance(x, BaseModel) for x in v.values()):
        return "see below"
    if isinstance(v, timedelta):
        return f"`{format_duration(v)}`"
    if isinstance(v, enum.Enum):
        return f"`{v.value}`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, list | dict) and not v:
        return "`[]`" if isinstance(v, list) else "`{}`"
    if isinstance(v, list):
        return "`[" + ", ".join(str(x) for x in v) + "]`"
    return f"`{v}`"


def _models(t: Any) -> list[type[BaseModel]]:
    """The models a field's type holds (through Optional, list, dict values, unions)."""
    t = _strip_optional(t)
    origin = get_origin(t)
    if origin is typing.Annotated:
        return _models(get_args(t)[0])
    if origin is list:
        return _models(get_args(t)[0])
    if origin is dict:
        return _models(get_args(t)[1])
    if origin in (typing.Union, types.UnionType):
        return [m for a in get_args(t) for m in _models(a)]
    if isinstance(t, type) and issubclass(t, BaseModel):
        return [t]
    return []


def _path_part(name: str, t: Any) -> str:
    t = _strip_optional(t)
    origin = get_origin(t)
    if origin is list:
        return f"{name}[]"
    if origin is dict:
        k = get_args(t)[0]
        if isinstance(k, type) and issubclass(k, enum.Enum):
            return f"{name}.<{'|'.join(m.value for m in k)}>"
        return f"{name}.<key>"
    return name


def sections(root: type[BaseModel] = S.Site) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path, model) for every section, depth first; each model once at its first path."""
    seen: set[type[BaseModel]] = set()

    def walk(path: str, cls: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel]]]:
        if cls in seen:
            return
        seen.add(cls)
        yield path, cls
        for name, info in cls.model_fields.items():
            key = info.alias or name
            sub = _path_part(key, info.annotation)
            for m in _models(info.annotation):
                label = f"{sub} ({_variant(m)})" if len(_models(info.annotation)) > 1 else sub
                yield from walk(f"{path}.{label}" if path else label, m)

    yield from walk("", root)


def _variant(m: type[BaseModel]) -> str:
    """``provider: http`` for a member of a union told apart by a Literal field."""
    for name, info in m.model_fields.items():
        if get_origin(info.annotation) is Literal:
            return f"{name}: {'/'.join(str(a) for a in get_args(info.annotation))}"
    return m.__name__


def undocumented() -> list[str]:
    return [f"{cls.__name__}.{name}" for _, cls in sections() for name, info in cls.model_fields.items()
            if not describe(cls, name, info)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    out = [
        "# Site-file reference",
        "",
        "<!-- Generated by `hazardwatch docs generate` from the models in park/site.py; do not edit. -->",
        "",
        "Every key of the site file, its type, its default and its meaning. Unknown keys are refused.",
        "Durations are written `30s`, `5m`, `2h`, `7d`. A secret may be written `${ENV_NAME}` (refused when",
        "the variable is unset) or `${ENV_NAME:-default}`. `hazardwatch check-config SITE.yaml` checks a",
        "file and names the line of every problem. A complete example: `deploy/site.example.yaml`.",
        "A section that appears in several places (`contacts`, `wecom_robot` on districts, towns and",
        "enterprises) is described once, at its first place.",
        "",
    ]
    for path, cls in sections():
        title = path or "top level"
        out += [f"## `{title}`" if path else "## Top level", ""]
        doc = inspect.getdoc(cls)
        if doc and cls is not S.Site and not doc.startswith(("Create a new model", "!!! abstract")):
            out += [doc.splitlines()[0], ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in cls.model_fields.items():
            key = info.alias or name
            out.append(f"| `{key}` | {_cell(type_text(info.annotation, info))} | {_cell(default_text(info))} | "
                       f"{_cell(describe(cls, name, info))} |")
        out.append("")
    out += _kinds() + _gases() + _escalation_defaults()
    return "\n".join(out).rstrip() + "\n"


def _kinds() -> list[str]:
    defaults = {
        S.SensorKind.GAS_COMBUSTIBLE: f"H {COMBUSTIBLE_LIMITS[0]:g} / HH {COMBUSTIBLE_LIMITS[1]:g} %LEL "
                                      "(GB/T 50493-2019)",
        S.SensorKind.GAS_TOXIC: "1× / 2× the gas's occupational exposure limit (table below)",
        S.SensorKind.OXYGEN: f"L {OXYGEN_LIMITS[0]:g} / H {OXYGEN_LIMITS[1]:g} %VOL",
    }
    out = ["## Sensor kinds", "", "| kind | 中文 | default unit | limits |", "|---|---|---|---|"]
    for k in S.SensorKind:
        if k in defaults:
            lim = defaults[k]
        elif k.is_boolean:
            lim = "a switch (`true`/`false`), takes no limits"
        else:
            lim = "**must be given** (`limits:`)"
        out.append(f"| `{k.value}` | {k.zh} | {k.default_unit or '—'} | {lim} |")
    out += ["", f"A sensor without `interval:` is expected every {format_duration(DEFAULT_INTERVAL)}.", ""]
    return out


def _gases() -> list[str]:
    out = ["## Toxic gases with standard limits", "",
           "`gas:` takes the formula or the Chinese name; `unit:` may be `mg/m3` (default) or `ppm` "
           "(converted at 25 °C: mg/m³ = ppm × molar mass / 24.45).", "",
           "| gas | 中文 | first level mg/m³ | second level mg/m³ | first / second ppm |", "|---|---|---|---|---|"]
    for g in GASES.values():
        a, b = g.limits("ppm")
        out.append(f"| `{g.code}` | {g.name_zh} | {g.first_mg_m3:g} | {g.second_mg_m3:g} | {_num(a)} / {_num(b)} |")
    return [*out, ""]


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _escalation_defaults() -> list[str]:
    out = ["## Default escalation", "",
           "Used when the file has no `escalation:` section; a file that has one gives all four severities.", "",
           "| severity | at once | then | repeat |", "|---|---|---|---|"]
    for sev, pol in S.default_escalation().items():
        then = ", ".join(f"{s.level} after {format_duration(s.after)}" for s in pol.then) or "—"
        rep = format_duration(pol.repeat_every) if pol.repeat_every else "—"
        out.append(f"| {sev.value} ({sev.zh}) | {', '.join(pol.immediate)} | {then} | {rep} |")
    return [*out, ""]
