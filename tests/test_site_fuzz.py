"""The site-file loader under a fuzzer (issue 11, item 7): hypothesis mutating real site files — the
shipped example in deploy/ and the parks the tests and the simulator use — line by line and byte by
byte, with secrets supplied through the environment as in production. Bounded time:
``HW_FUZZ_EXAMPLES`` examples (default 3,000; CI may raise it); hypothesis shrinks any failure.

What must hold for every input: the loader returns a site or raises ``SiteFileError`` — never any
other exception; every problem is a sentence that names where to fix it (a line, or a key path);
and no secret value taken from the environment appears in the error text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from park.errors import SiteFileError
from park.sitefile import parse_site
from simulators.park import site_yaml
from tests.service_helpers import site_text
from tests.test_alerting_outage import SITE as OUTAGE_SITE

ROOT = Path(__file__).resolve().parent.parent
BUDGET = int(os.environ.get("HW_FUZZ_EXAMPLES", "3000"))
FUZZ = settings(max_examples=BUDGET, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# every secret the example names through ${…}, with values a leak is easy to spot in
SECRET_NAMES = sorted(set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "deploy" / "site.example.yaml").read_text())))
ENV = {name: f"s3cr3t-{i:02d}-{name.lower()}" for i, name in enumerate(SECRET_NAMES)}


def _with_secrets(text: str) -> str:
    """The test parks with their vendor keys and tokens written as ${…}, as in production."""
    text = text.replace('key: "robot-e1"', 'key: "${HW_FUZZ_ROBOT}"')
    return text.replace('/send"}', '/send", token: "${HW_FUZZ_SMS}"}')


ENV |= {"HW_FUZZ_ROBOT": "s3cr3t-robot-key-e1", "HW_FUZZ_SMS": "s3cr3t-sms-token"}
CORPUS = [
    (ROOT / "deploy" / "site.example.yaml").read_text(encoding="utf-8"),
    _with_secrets(site_text("http://127.0.0.1:9801", "http://127.0.0.1:9802")),
    _with_secrets(OUTAGE_SITE.format(sms="http://127.0.0.1:9801")),
    site_yaml(7),
]
SECRETS = [v for v in ENV.values()]

# what a person editing the file gets wrong: values of the wrong shape, YAML's own syntax, hostile tags
VALUES = ["", "~", "null", "0", "-1", "1e309", "nan", "true", "[]", "{}", "[1, [2, {3: 4}]]", "'unterminated",
          '"${HW_SMS_TOKEN}"', "${HW_FUZZ_ROBOT}", "${NOT_SET_ANYWHERE}", "*nowhere", "&a x",
          "!!python/object:os.system x",
          "!!binary aGVsbG8=", "2026-11-23", "99999999999999999999999999", "5m", "-5m", "10x", "é中文", "\t", "? x",
          "{key: ${HW_FUZZ_SMS}}", "[${HW_FUZZ_SMS}]", "x" * 5000]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(CORPUS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent", "value", "key", "insert",
                                   "truncate", "bytes", "move-secret"]))
        line = lines[i]
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, line)
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = " " * draw(st.integers(1, 4)) + line
        elif op == "dedent":
            lines[i] = line.lstrip()
        elif op == "value" and ":" in line:
            head = line.rsplit(":", 1)[0]
            lines[i] = f"{head}: {draw(st.sampled_from(VALUES) | st.text(max_size=20))}"
        elif op == "key" and ":" in line:
            key = line.split(":", 1)[0]
            lines[i] = line.replace(key.strip(), draw(st.sampled_from(["code", "name", "phone", "tag", "kind", "x",
                                                                       "contacts", "sensors", "key", "token"])), 1)
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=40)))
        elif op == "truncate":
            lines[i] = line[:draw(st.integers(0, max(0, len(line))))]
        elif op == "bytes":
            raw = bytearray(line.encode())
            for _ in range(draw(st.integers(1, 3))):
                if raw:
                    raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
            lines[i] = raw.decode("utf-8", errors="replace")
        elif op == "move-secret":
            # a secret reference pasted where a plain value belongs (a name, a phone, a code)
            lines[i] = re.sub(r":\s*[^{\[#]+$", ': "${HW_FUZZ_SMS}"', line, count=1)
    return "\n".join(lines) + "\n"


def check(text: str) -> None:
    try:
        parse_site(text, file="site.yaml", environ=ENV)
    except SiteFileError as e:
        said = str(e)
        assert e.problems, said
        for p in e.problems:
            assert p.message.strip(), said
            assert p.line is not None or p.path, f"a problem that names neither line nor key: {p}"
            if p.line is not None:
                # YAML's own line breaks: \r, \r\n, \n, NEL, LS, PS
                lines = len(re.split("\r\n|[\r\n\x85\u2028\u2029]", text))
                assert 1 <= p.line <= lines + 1, f"line {p.line} outside the file: {p}"
        for secret in SECRETS:
            assert secret not in said, f"a secret echoed in the error:\n{said}"


def test_the_corpus_loads() -> None:
    for text in CORPUS:
        parse_site(text, file="site.yaml", environ=ENV)


@pytest.mark.parametrize("value", VALUES)
def test_every_hostile_value_at_every_secret_key_is_refused_without_echoing_it(value: str) -> None:
    base = CORPUS[1]
    for key in ("key", "token"):
        text = re.sub(rf"{key}: \"\$\{{HW_FUZZ_[A-Z]+\}}\"", f"{key}: {value}", base)
        check(text)


@FUZZ
@given(mutated())
@example("site: {name: x}\ndistricts:\n  - code: D1\n    name: \"${HW_FUZZ_SMS}\"\n    contacts: []\n")
def test_a_mutated_site_file_loads_or_is_refused_with_a_clear_error(text: str) -> None:
    check(text)


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_with_a_clear_error(raw: bytes) -> None:
    check(raw.decode("utf-8", errors="replace"))
