"""The console channel: messages to the log (the demo's channel, and a trace beside real ones)."""

from __future__ import annotations

import logging

from alerting.channels.base import OutMessage

log = logging.getLogger("hazardwatch.notify")


class ConsoleChannel:
    name = "console"

    async def send(self, msg: OutMessage) -> str:
        log.warning("📣 → %s\n%s", msg.contact, msg.text)
        return "logged"
