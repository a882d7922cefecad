"""How each stage is doing, for ``/readyz``, a metric and the log.

A stage that meets a transient fault (database away, broker unreachable, SMS gateway failing)
keeps running, retries with back-off and says so here; when it recovers it says that too.
Nothing here does IO: the shell reads it to answer ``/readyz`` and to export
``hazardwatch_stage_degraded{stage}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("hazardwatch.health")


@dataclass(slots=True)
class StageState:
    """One stage's health: ``reason`` is None while it is well."""

    stage: str
    reason: str | None = None
    since: datetime | None = None
    restarts: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


class Health:
    """Stages report themselves degraded or well; listeners (a metric) hear every change.

    ``degraded`` and ``ok`` are idempotent and cheap, so a retry loop may call them on every
    attempt: only a change of state is logged and passed on.
    """

    def __init__(self) -> None:
        self.stages: dict[str, StageState] = {}
        self._listeners: list[Callable[[StageState], None]] = []

    def listen(self, fn: Callable[[StageState], None]) -> None:
        self._listeners.append(fn)
        for st in self.stages.values():
            fn(st)

    def register(self, stage: str) -> StageState:
        st = self.stages.get(stage)
        if st is None:
            st = self.stages[stage] = StageState(stage)
            self._tell(st)
        return st

    def degraded(self, stage: str, reason: str, now: datetime | None = None) -> None:
        st = self.register(stage)
        if st.reason == reason:
            return
        was_ok = st.ok
        st.reason = reason
        if was_ok:
            st.since = now
            log.warning("stage %s degraded: %s", stage, reason)
        self._tell(st)

    def ok(self, stage: str, now: datetime | None = None) -> None:
        st = self.register(stage)
        if st.ok:
            return
        log.warning("stage %s recovered (degraded since %s: %s)", stage, st.since, st.reason)
        st.reason = None
        st.since = now
        self._tell(st)

    def forget(self, stage: str) -> None:
        """The stage is gone (a leader's term ended): no report of it is left behind, and listeners
        hear it as well."""
        st = self.stages.pop(stage, None)
        if st is not None and not st.ok:
            log.warning("stage %s ended while degraded (%s)", stage, st.reason)
            st.reason = None
            self._tell(st)

    def restarted(self, stage: str) -> None:
        self.register(stage).restarts += 1

    @property
    def all_ok(self) -> bool:
        return all(st.ok for st in self.stages.values())

    def report(self) -> dict[str, dict[str, object]]:
        """For ``/readyz``: every stage, well or with its reason."""
        return {
            s.stage: {"ok": s.ok, "reason": s.reason, "since": s.since.isoformat() if s.since else None,
                      "restarts": s.restarts}
            for s in self.stages.values()
        }

    def _tell(self, st: StageState) -> None:
        for fn in self._listeners:
            fn(st)
