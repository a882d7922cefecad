"""The site file (docs/contract.md §2): accepted when right, refused with file, line and a fix when not."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from park.errors import SiteFileError
from park.gases import GASES, lookup_gas, mg_m3_to_ppm
from park.model import Park
from park.site import SensorKind
from park.sitefile import load_site, parse_site
from park.types import Severity
from tests.site_helpers import MINIMAL_SITE, big_site, line_of, variant


def refusal(text: str) -> SiteFileError:
    with pytest.raises(SiteFileError) as exc:
        parse_site(text, "site.yaml", environ={})
    return exc.value


def test_contract_example_is_accepted_with_standard_defaults() -> None:
    park = Park.from_site(parse_site(MINIMAL_SITE, environ={}))
    lt, h2s, lel = park.sensors
    assert (lt.limits.hh, lt.limits.h, lt.limits.l, lt.limits.ll) == (9.0, 8.5, 1.0, 0.5)
    assert (h2s.limits.h, h2s.limits.hh) == (10, 20)  # GB/T 50493: 1x / 2x OEL
    assert (lel.limits.h, lel.limits.hh) == (25.0, 50.0)
    assert lt.hazard_grade == 2 and lt.name == "T-101 液位"
    assert park.site.escalation[Severity.RED].then[0].after == timedelta(minutes=5)
    assert [u.code for u in park.chain("E001")] == ["E001", "LJ", "HM"]
    assert park.in_scope("LJ", "E001") and not park.in_scope("E001", "E002")


def test_all_fourteen_gases_in_both_units() -> None:
    assert len(GASES) >= 14
    for code, gas in GASES.items():
        first, second = gas.limits("ppm")
        assert second == pytest.approx(2 * first)
        assert first == pytest.approx(mg_m3_to_ppm(gas.first_mg_m3, gas.molar_mass))
        text = variant("gas: H2S, unit: mg/m3", f"gas: {code}, unit: ppm")
        spec = Park.from_site(parse_site(text, environ={})).sensors[1]
        assert spec.limits.h == pytest.approx(first, rel=1e-3)
    assert lookup_gas("苯") is GASES["C6H6"] and lookup_gas("h2s") is GASES["H2S"]


def test_oxygen_default_and_override() -> None:
    text = variant(
        "{tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}",
        "{tag: OX-1, kind: oxygen}\n              - {tag: OX-2, kind: oxygen, limits: {l: 18}}",
    )
    park = Park.from_site(parse_site(text, environ={}))
    assert (park.by_key[("E001", "OX-1")].limits.l, park.by_key[("E001", "OX-1")].limits.h) == (19.5, 23.5)
    assert park.by_key[("E001", "OX-2")].limits.l == 18


# Each refusal: (what is changed, the line it must be reported on, words the sentence must contain)
REFUSALS = [
    ("unknown key", ("grade: 2}", "grade: 2, colour: red}"), "grade: 2", ["unknown key 'colour'"]),
    ("wrong type", ("grade: 2}", "grade: two}"), "grade: two", ["integer"]),
    ("grade out of range", ("grade: 2}", "grade: 7}"), "grade: 7", ["less than or equal to 4"]),
    ("duplicate tag", ("tag: AT-2002", "tag: AT-2001"), "kind: gas_combustible", ["duplicate tag 'AT-2001'"]),
    ("duplicate unit code", ("code: LJ", "code: HM"), ("code: HM", 2), ["duplicate unit code 'HM'"]),
    ("missing limits", (", limits: {hh: 9.0, h: 8.5, l: 1.0, ll: 0.5}}", "}"), "tag: LT-1001",
     ["no standard default limits", "add limits"]),
    ("limits out of order", ("hh: 9.0, h: 8.5", "hh: 8.0, h: 8.5"), "limits:", ["out of order", "ll < l < h < hh"]),
    ("unknown gas", ("gas: H2S", "gas: XYZ"), "gas: XYZ", ["unknown gas 'XYZ'"]),
    ("toxic without gas", ("gas: H2S, ", ""), "kind: gas_toxic", ["needs gas:"]),
    ("unknown hazard source", ("hazard_source: HS01,", "hazard_source: HS09,"), "hazard_source: HS09",
     ["unknown hazard source 'HS09'"]),
    ("contact without phone", ('{name: 张工, phone: "13800000003", channels: [sms]}', "{name: 张工, channels: [sms]}"),
     "name: 张工", ["no phone"]),
    ("contact on unconfigured wecom",
     ('phone: "13800000003", channels: [sms]', 'phone: "13800000003", channels: [wecom]'),
     "name: 张工", ["no wecom_user"]),
    ("contact with no channels", ('phone: "13800000003", channels: [sms]', 'phone: "13800000003", channels: []'),
     "name: 张工", ["no channels"]),
    ("bad duration", ("after: 5m}", "after: 5 minutes}"), "after: 5 minutes", ["not a duration", "5m"]),
    ("escalation level that does not exist", ("{level: town, after: 30m}", "{level: city, after: 30m}"),
     "level: city", ["'city' does not exist"]),
    ("unset env secret", ('key: "district-robot-key"', 'key: "${ROBOT_KEY_HM}"'), "ROBOT_KEY_HM",
     ["ROBOT_KEY_HM is not set"]),
    ("unknown sensor kind", ("kind: gas_combustible", "kind: gas_flammable"), "gas_flammable", ["gas_flammable"]),
    ("unknown sms provider", ("provider: http", "provider: qq"), "provider: qq", ["unknown provider 'qq'"]),
    ("tag with topic syntax", ("tag: AT-2002", "tag: AT/2002"), "AT/2002", ["may not contain '/'"]),
    ("duplicate yaml key", ("name: 海门区\n", "name: 海门区\n    name: 又一个\n"), "又一个", ["given twice"]),
    ("missing policy", ("  blue:   {immediate: [enterprise]}\n", ""), "escalation:", ["no policy for severity blue"]),
]


@pytest.mark.parametrize(("change", "line_text", "words"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal_names_line_and_fix(
    change: tuple[str, str], line_text: str | tuple[str, int], words: list[str]
) -> None:
    text = variant(*change)
    err = refusal(text)
    assert err.problems, "refused without a reason"
    p = err.problems[0]
    assert p.file == "site.yaml"
    needle, nth = line_text if isinstance(line_text, tuple) else (line_text, 1)
    assert p.line == line_of(text, needle, nth), f"{p} not on the line of {line_text!r}"
    for w in words:
        assert w in p.message, f"{w!r} not in {p.message!r}"
    assert f"site.yaml:{p.line}" in str(err)


def test_env_secret_is_substituted_and_not_printed() -> None:
    text = variant('key: "district-robot-key"', 'key: "${ROBOT_KEY_HM}"')
    site = parse_site(text, environ={"ROBOT_KEY_HM": "s3cret-value"})
    assert site.districts[0].wecom_robot is not None
    assert site.districts[0].wecom_robot.key.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(site) and "s3cret-value" not in str(site.model_dump())


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = variant("gas: H2S", "gas: XYZ", variant("tag: AT-2002", "tag: AT-2001"))
    assert len(refusal(text).problems) == 2


def test_not_yaml_and_empty_and_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    err = refusal("site: {name: x\ndistricts: [")
    assert "not valid YAML" in err.problems[0].message and err.problems[0].line
    assert "empty" in refusal("").problems[0].message
    with pytest.raises(SiteFileError, match="file not found"):
        load_site(tmp_path / "nope.yaml")


def test_unquoted_phone_number_is_accepted() -> None:
    text = variant('phone: "13800000003"', "phone: 13800000003")
    assert parse_site(text, environ={}).districts[0].towns[0].enterprises[0].contacts[0].phone == "13800000003"


def test_boolean_kinds_need_no_limits_and_refuse_them() -> None:
    ok = variant("{tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}", "{tag: SP-1, kind: spark_detector}")
    assert Park.from_site(parse_site(ok, environ={})).by_key[("E001", "SP-1")].kind is SensorKind.SPARK_DETECTOR
    bad = variant("{tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}",
                  "{tag: SP-1, kind: spark_detector, limits: {h: 1}}")
    assert "takes no limits" in refusal(bad).problems[0].message


def test_five_thousand_sensors_load_quickly() -> None:
    # Reported figure, not a timed assertion: the bound only catches an accidental quadratic.
    text = big_site(100, 50)
    t0 = time.perf_counter()
    park = Park.from_site(parse_site(text, environ={}))
    elapsed = time.perf_counter() - t0
    assert len(park.sensors) == 5000
    print(f"5,000-sensor site file parsed and compiled in {elapsed * 1000:.0f} ms")
    assert elapsed < 10


def test_example_site_file_in_deploy_passes() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "deploy" / "site.example.yaml"
    site = load_site(path, environ={"HW_SMS_TOKEN": "x", "HW_ROBOT_E002": "x"})
    park = Park.from_site(site)
    assert park.counts()["towns"] >= 3
    assert {k.value for k in SensorKind} <= set(park.kinds()), "the example should show every sensor kind"


def test_check_config_command_exit_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "deploy" / "site.example.yaml"
    env = {"HW_SMS_TOKEN": "x", "HW_ROBOT_E002": "x", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "hazardwatch", "check-config", str(example)],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "30 sensors" in ok.stdout and "red" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(variant("gas: H2S", "gas: XYZ"), encoding="utf-8")
    no = subprocess.run([sys.executable, "-m", "hazardwatch", "check-config", str(bad)],
                        capture_output=True, text=True, env=env, timeout=60)
    assert no.returncode == 1
    assert f"bad.yaml:{line_of(variant('gas: H2S', 'gas: XYZ'), 'gas: XYZ')}" in no.stderr
    assert "unknown gas 'XYZ'" in no.stderr
