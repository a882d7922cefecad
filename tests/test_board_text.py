"""What the board computes without a browser: shifts, rounding with units, the map layout, the rule
explained in words, and the site-file checks of the duty-room settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hazardwatch.api.present import alarm_json
from hazardwatch.api.routes.units import layout
from hazardwatch.api.shifts import current_shift
from park.errors import SiteFileError
from park.model import Park
from park.sitefile import parse_site
from park.units import format_rate, format_value, precision_for
from tests.site_helpers import MINIMAL_SITE


@pytest.mark.parametrize(("now", "start", "end"), [
    # 08:00 / 20:00 Shanghai = 00:00 / 12:00 UTC
    ("2026-11-23T03:00:00+00:00", "2026-11-23T00:00:00+00:00", "2026-11-23T12:00:00+00:00"),  # 11:00 day shift
    ("2026-11-23T13:00:00+00:00", "2026-11-23T12:00:00+00:00", "2026-11-24T00:00:00+00:00"),  # 21:00 night shift
    ("2026-11-22T23:59:00+00:00", "2026-11-22T12:00:00+00:00", "2026-11-23T00:00:00+00:00"),  # 07:59 still night
    ("2026-11-23T00:00:00+00:00", "2026-11-23T00:00:00+00:00", "2026-11-23T12:00:00+00:00"),  # 08:00 sharp: day
])
def test_current_shift_of_two_12_hour_shifts(now: str, start: str, end: str) -> None:
    s, e = current_shift(datetime.fromisoformat(now), ["08:00", "20:00"])
    assert (s, e) == (datetime.fromisoformat(start), datetime.fromisoformat(end))


def test_three_shifts_any_order() -> None:
    s, e = current_shift(datetime(2026, 11, 23, 9, 0, tzinfo=UTC), ["16:00", "00:00", "08:00"])  # 17:00 local
    assert (s.hour, e.hour) == (8, 16)  # 16:00–24:00 local in UTC


def test_values_rounded_with_units() -> None:
    assert format_value(25.3333, 1, "%LEL") == "25.3 %LEL"
    assert format_value(2.53333, 1, "mg/m3") == "2.5 mg/m³"
    assert format_value(38.04, 1, "°C") == "38.0°C"
    assert format_value(0.42, 3, "MPa") == "0.420 MPa"
    assert format_value(-0.001, 1, "m") == "0.0 m"  # never "-0.0"
    assert format_value(None, 1, "m") == "—" and format_value(float("inf"), 1, "m") == "—"
    assert format_rate(0.5, 1, "m") == "0.50 m/分钟"
    assert precision_for("gas_combustible") == 1 and precision_for("tank_level", 3) == 3
    assert precision_for("pressure") == 3 and precision_for("no-such-kind") == 2


SITE = MINIMAL_SITE


def test_site_file_duty_room_settings_are_checked() -> None:
    ok = parse_site(SITE.replace("site: {name:", "site: {shifts: ['08:00', '16:00', '00:00'], name:", 1),
                    environ={})
    assert ok.site.shifts == ["08:00", "16:00", "00:00"]
    for bad, words in ((SITE.replace("site: {name:", "site: {shifts: ['8am'], name:", 1), "shifts"),
                       (SITE.replace("site: {name:", "site: {shifts: ['08:00', '08:00'], name:", 1), "twice"),
                       (SITE + "http: {trusted_proxies: [not-an-address]}\n", "not an address")):
        with pytest.raises(SiteFileError) as e:
            parse_site(bad, environ={})
        assert words in str(e.value), str(e.value)


def test_auto_map_layout_stays_on_the_plan_and_groups_by_town() -> None:
    park = Park.from_site(parse_site(SITE, environ={}))
    m = layout(park, list(park.enterprises))
    assert m["auto"] and m["enterprises"]
    for e in m["enterprises"]:
        town = next(t for t in m["towns"] if t["code"] == e["town"])
        assert town["x"] <= e["x"] <= town["x"] + town["w"] and town["y"] <= e["y"] <= town["y"] + town["h"]


def test_alarm_text_uses_names_and_precision() -> None:
    park = Park.from_site(parse_site(SITE, environ={}))
    s = park.sensors[0]
    row = {"id": 1, "enterprise": s.enterprise, "tag": s.tag, "sensor_id": s.id, "rule": "high", "severity": "orange",
           "state": "active_unacked", "raised_at": datetime(2026, 11, 23, tzinfo=UTC), "value": 9.12345,
           "limit": 9.0, "message": "raw", "detail": {"level": "HH", "backfilled": True}, "kind": s.kind.value}
    a = alarm_json(park, row)
    assert a["value_text"] == s.show(9.12345) and "9.12345" not in a["text"]
    assert a["backfilled"] is True and a["enterprise_name"] == park.enterprises[s.enterprise].name
