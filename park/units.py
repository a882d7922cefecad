"""Values as people read them: rounded to the sensor's precision, with a readable unit.

One helper for the board, SMS and WeCom, so a reading says the same thing everywhere
("25.3 %LEL", never "25.3333 %LEL"). The precision is the sensor's own (site file
``precision:``) or the default of its kind.
"""

from __future__ import annotations

import math

from park.site import SensorKind

# decimal places a duty operator needs per kind: what the field instrument itself resolves
DEFAULT_PRECISION: dict[SensorKind, int] = {
    SensorKind.GAS_COMBUSTIBLE: 1,  # %LEL
    SensorKind.GAS_TOXIC: 1,  # mg/m3 or ppm
    SensorKind.OXYGEN: 1,  # %VOL
    SensorKind.TANK_LEVEL: 2,  # m
    SensorKind.TEMPERATURE: 1,  # °C
    SensorKind.PRESSURE: 3,  # MPa
    SensorKind.FLOW: 1,  # m3/h
    SensorKind.DUST_DP: 0,  # Pa
    SensorKind.DUST_HOPPER_TEMP: 1,  # °C
    SensorKind.POWER: 0,  # kW
    SensorKind.SPARK_DETECTOR: 0,
    SensorKind.FAULT_SIGNAL: 0,
    SensorKind.RUN_STATE: 0,
}

# how units are written for people (the site file keeps ASCII spellings)
_UNIT_TEXT = {"mg/m3": "mg/m³", "m3/h": "m³/h", "m3": "m³", "degC": "°C", "C": "°C", "ug/m3": "μg/m³"}


def precision_for(kind: SensorKind | str | None, own: int | None = None) -> int:
    """The sensor's own precision, else its kind's default (2 for anything unknown)."""
    if own is not None:
        return own
    try:
        return DEFAULT_PRECISION[SensorKind(kind)] if kind is not None else 2
    except ValueError:
        return 2


def unit_text(unit: str | None) -> str:
    """``mg/m3`` → ``mg/m³``; unknown units as written."""
    return _UNIT_TEXT.get(unit or "", unit or "")


def format_number(value: float | None, precision: int) -> str:
    """``value`` with ``precision`` decimals; "—" for a missing or non-finite value; no "-0"."""
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{value:.{max(0, precision)}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_value(value: float | None, precision: int, unit: str | None = None) -> str:
    """``25.3 %LEL``, ``0.420 MPa``, ``38 °C``; "—" when there is no value."""
    num = format_number(value, precision)
    u = unit_text(unit)
    if num == "—" or not u:
        return num
    return f"{num}{u}" if u.startswith("°") else f"{num} {u}"


def format_rate(per_min: float | None, precision: int, unit: str | None = None) -> str:
    """A rate of change: ``1.25 m/分钟`` (one decimal more than the value, it is usually small)."""
    num = format_number(per_min, precision + 1)
    u = unit_text(unit)
    return num if num == "—" else f"{num} {u}/分钟" if u else f"{num}/分钟"


__all__ = ["DEFAULT_PRECISION", "format_number", "format_rate", "format_value", "precision_for", "unit_text"]
