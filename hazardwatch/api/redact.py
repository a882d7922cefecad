"""Secrets never leave through the API: every answer that carries stored text is scrubbed.

Vendor errors kept in ``notifications.detail`` can quote a URL with a robot ``key=`` or an
``access_token=``; the scrubber masks the site's own secret values wherever they appear, and
the usual secret-bearing query parameters whatever their value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from park.redact import secret_values
from park.settings import Settings
from park.site import Site

MASK = "***"
_PARAMS = re.compile(r"(?i)\b(key|access_token|corpsecret|secret|password|token|signature)=([^&\s\"'<>]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/\s@]+):([^@/\s]+)@")


class Redactor:
    def __init__(self, site: Site, settings: Settings, extra: Iterable[str] = ()) -> None:
        values = secret_values(site) | set(extra)
        for s in (settings.database_url, settings.link_secret):
            if s is not None:
                values.add(s.get_secret_value())
        for broker in settings.brokers:  # every broker's password, not only the first's
            if broker.password is not None:
                values.add(broker.password.get_secret_value())
        # short values would mask ordinary words; secrets are long
        self._values = sorted((v for v in values if len(v) >= 6), key=len, reverse=True)

    def text(self, s: str) -> str:
        for v in self._values:
            if v in s:
                s = s.replace(v, MASK)
        s = _PARAMS.sub(lambda m: f"{m.group(1)}={MASK}", s)
        return _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", s)

    def __call__(self, obj: Any) -> Any:
        """``obj`` (JSON-like) with every string scrubbed."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self(v) for v in obj]
        return obj
