"""Keeping secrets out of everything hazardwatch prints, stores as text or answers.

``Redactor`` knows the service's secret values (site-file ``SecretStr`` fields: robot keys, SMS
keys, WeCom corpsecret, webhook secrets; passwords in the database and MQTT URLs; the link key)
and replaces them with ``***``. ``RedactingFilter`` applies it to every log record, traceback
included, at the handler — so even a library that logs a URL with a key in it (httpx logs every
request at INFO) prints nothing secret.
"""

from __future__ import annotations

import datetime
import enum
import logging
import typing
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
MIN_LEN = 4  # shorter values would mask ordinary text


def secret_values(obj: object) -> set[str]:
    """Every ``SecretStr`` value inside a pydantic model (recursively through lists and dicts).

    Only fields whose declared type can hold a secret are walked (:func:`secret_fields`): a
    440,000-sensor site file has no secret below its enterprises, and walking every sensor was
    seconds of start-up."""
    out: set[str] = set()
    stack: list[object] = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, SecretStr):
            out.add(x.get_secret_value())
        elif isinstance(x, BaseModel):
            stack.extend(getattr(x, name) for name in secret_fields(type(x)))
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return out


_PLAIN = (str, bytes, int, float, bool, complex, type(None), datetime.timedelta, datetime.datetime,
          datetime.date, datetime.time, enum.Enum)


def secret_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``cls`` whose declared type may hold a ``SecretStr`` (anything unknown counts)."""
    found = _SECRET_FIELDS.get(cls)
    if found is None:
        _SECRET_FIELDS[cls] = ()  # a model that refers to itself adds nothing through that reference
        found = tuple(name for name, f in cls.model_fields.items() if _may_hold_secret(f.annotation))
        _SECRET_FIELDS[cls] = found
    return found


_SECRET_FIELDS: dict[type, tuple[str, ...]] = {}


def _may_hold_secret(tp: Any) -> bool:
    if tp is SecretStr:
        return True
    if isinstance(tp, type):
        if issubclass(tp, SecretStr):
            return True
        if issubclass(tp, BaseModel):
            return bool(secret_fields(tp))
        if issubclass(tp, _PLAIN):
            return False
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return False
    if origin is typing.Annotated:
        return _may_hold_secret(args[0])
    if args:
        return any(_may_hold_secret(a) for a in args if a is not Ellipsis)
    return True  # Any, a bare container, a forward reference: walk it


def url_password(url: str | None) -> set[str]:
    if not url:
        return set()
    try:
        pw = urlsplit(url).password
    except ValueError:
        return set()
    return {pw, unquote(pw)} if pw else set()


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_LEN}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, MASK)
        return text


class RedactingFilter(logging.Filter):
    """A handler filter: the message and any traceback with every secret masked."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed log call: keep the raw template rather than lose the line
            msg = str(record.msg)
        record.msg, record.args = self.redact(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(redact: Redactor, logger: logging.Logger | None = None) -> list[tuple[logging.Handler, RedactingFilter]]:
    """Put the filter on every handler of ``logger`` (the root by default); returns them for removal."""
    root = logger or logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    added = []
    for h in root.handlers:
        f = RedactingFilter(redact)
        h.addFilter(f)
        added.append((h, f))
    return added
