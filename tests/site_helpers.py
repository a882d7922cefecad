"""A small valid site file, and a way to make variants of it, for the site-file tests."""

from __future__ import annotations

MINIMAL_SITE = """\
site: {name: 示范化工园区}
districts:
  - code: HM
    name: 海门区
    contacts:
      - {name: 区应急局值班室, phone: "13800000001", channels: [sms]}
    wecom_robot: {key: "district-robot-key"}
    towns:
      - code: LJ
        name: 临江镇
        contacts: [{name: 园区值班室, phone: "13800000002", channels: [sms]}]
        enterprises:
          - code: E001
            name: 某某化工有限公司
            contacts: [{name: 张工, phone: "13800000003", channels: [sms]}]
            hazard_sources:
              - {code: HS01, name: 苯罐区, grade: 2}
            sensors:
              - {tag: LT-1001, kind: tank_level, unit: m, hazard_source: HS01,
                 name: T-101 液位, limits: {hh: 9.0, h: 8.5, l: 1.0, ll: 0.5}}
              - {tag: AT-2001, kind: gas_toxic, gas: H2S, unit: mg/m3}
              - {tag: AT-2002, kind: gas_combustible, unit: "%LEL"}
escalation:
  red:    {immediate: [enterprise, town], then: [{level: district, after: 5m}],  repeat_every: 5m}
  orange: {immediate: [enterprise], then: [{level: town, after: 10m}, {level: district, after: 30m}], repeat_every: 10m}
  yellow: {immediate: [enterprise], then: [{level: town, after: 30m}]}
  blue:   {immediate: [enterprise]}
channels:
  sms: {provider: http, url: "https://sms-gateway.example/send"}
  wecom: {base_url: "https://qyapi.weixin.qq.com"}
"""


def variant(old: str, new: str, base: str = MINIMAL_SITE) -> str:
    """``base`` with exactly one occurrence of ``old`` replaced (fails loudly if absent)."""
    assert base.count(old) == 1, f"{old!r} occurs {base.count(old)} times"
    return base.replace(old, new)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            nth -= 1
            if nth == 0:
                return i
    raise AssertionError(f"{needle!r} not in text")


def big_site(n_enterprises: int, sensors_per: int) -> str:
    """A valid site with n_enterprises × sensors_per sensors across 2 districts and 4 towns."""
    out = [
        "site: {name: 大园区}",
        "channels: {sms: {provider: http, url: 'http://127.0.0.1:9/send'}}",
        "districts:",
    ]
    e = 0
    for d in range(2):
        out += [f"  - code: D{d}", f"    name: 区{d}", "    towns:"]
        for t in range(2):
            out += [f"      - code: D{d}T{t}", f"        name: 镇{d}{t}", "        enterprises:"]
            for _ in range(n_enterprises // 4):
                e += 1
                out += [
                    f"          - code: E{e:05d}",
                    f"            name: 企业{e}",
                    "            contacts: [{name: 安全员, phone: '13900000000', channels: [sms]}]",
                    "            hazard_sources: [{code: HS1, name: 罐区, grade: 3}]",
                    "            sensors:",
                ]
                for s in range(sensors_per):
                    if s % 3 == 0:
                        out.append(f"              - {{tag: AT-{s}, kind: gas_combustible, hazard_source: HS1}}")
                    elif s % 3 == 1:
                        out.append(f"              - {{tag: AT-{s}, kind: gas_toxic, gas: NH3, unit: ppm}}")
                    else:
                        out.append(
                            f"              - {{tag: LT-{s}, kind: tank_level, limits: {{hh: 9, h: 8, l: 1, ll: 0.5}}}}"
                        )
    return "\n".join(out) + "\n"
