"""``python -m tests.freeze_hook run …``: ``hazardwatch`` with one fault injected — the process stops
itself (SIGSTOP) the moment its alerting stage's sender has taken a claimed outbox row addressed
to ``HW_TEST_FREEZE_PHONE`` (from its own claim, or from the planning write that claimed it),
once. A leader frozen with a message in hand: claimed in the database, not yet sent. Everything
else is the real service; ``SIGCONT`` resumes it right there.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime

from alerting.outbox import Claimed
from alerting.service import IN_FLIGHT, AlertingService
from hazardwatch.cli import main

PHONE = os.environ.get("HW_TEST_FREEZE_PHONE", "")
_real_claim = AlertingService.claim
_frozen: list[str] = []


_real_take_handed = AlertingService._take_handed


def _freeze_if_addressed(got: list[Claimed]) -> list[Claimed]:
    if PHONE and not _frozen and any(c.payload.get("address") == PHONE for c in got):
        _frozen.extend(c.key for c in got)
        print(f"freeze hook: stopping with {', '.join(_frozen)} claimed", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        print("freeze hook: resumed", file=sys.stderr, flush=True)
    return got


async def claim(self: AlertingService, now: datetime, limit: int = IN_FLIGHT) -> list[Claimed]:
    return _freeze_if_addressed(await _real_claim(self, now, limit))


def take_handed(self: AlertingService) -> list[Claimed]:
    """What the planning write claimed itself (a step due as it is planned), as the sender takes it."""
    return _freeze_if_addressed(_real_take_handed(self))


AlertingService.claim = claim  # type: ignore[method-assign]
AlertingService._take_handed = take_handed  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
