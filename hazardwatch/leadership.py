"""Leader and standbys inside ``hazardwatch run``: who runs ingest, rules and alerting, and when.

Every instance campaigns with the ``Elector`` (``park.db.lease``). While it leads, ``Leadership``
runs the leader's work — ingest, rules, alerting, the command dispatcher — for that term, on a
pool of its own whose sessions carry the term (``hazardwatch.lease``): the database's fencing
trigger (migration 0060) refuses every alarm, event, outbox, notification, command and unit
write of a term that is over, and ``may_act()`` — asked just before each message is sent — says
no the moment the term is over by the local clock. When the term ends the work is cancelled and
the instance is a standby again (site and registry loaded, API served) and campaigns on.

One exception: a leader that loses the lease because *the database* is unreachable (the lease
session failed, not a takeover and not a stall) keeps its stages running on the local journal,
so alarms keep going out through a database outage as they do with one instance. It steps
down as soon as the database answers again and shows a different term (or it takes a new term
and restarts its stages on it). The cost, written in the operations guide: a network partition
that cuts only the leader off the database, while a standby still reaches it, has both send for
its length.

The API's operator commands go through the database (``ForwardedCommands`` → ``CommandClient``);
the leader's ``CommandDispatcher`` applies them with ``command_handler(rules)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from psycopg import AsyncConnection

from alerting.errors import NotLeading
from park.db.commands import Ack, Command, CommandClient, CommandRefused, Resolve, SetEnterpriseState, Shelve, Unshelve
from park.db.lease import Elector, Fenced, Term
from park.errors import Unavailable
from park.site import EnterpriseState
from rules.errors import AlarmNotFound, InvalidTransition, RulesError
from rules.service import RulesService

log = logging.getLogger("hazardwatch.leadership")

FENCED_SQLSTATE = "HW409"  # raised by the ha_fence() trigger (migration 0060)


def is_fenced(e: BaseException) -> bool:
    """True for a write refused because this instance's term is over (here or in its causes)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        if isinstance(cur, Fenced | NotLeading):
            return True
        if isinstance(cur, psycopg.Error) and cur.sqlstate == FENCED_SQLSTATE:
            return True
        if isinstance(cur, BaseExceptionGroup):
            return any(is_fenced(x) for x in cur.exceptions)
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def term_setting(term: Term) -> str:
    return f"{term.name}/{term.epoch}/{term.token}"


def fenced_sessions(term: Term) -> Callable[[AsyncConnection], Awaitable[None]]:
    """The ``configure`` of a term's pool: every session carries the term; an idle transaction ends after ttl.

    The second bounds how long a writer frozen inside its transaction (holding the lease row's
    KEY SHARE lock) can hold a takeover up."""
    async def configure(conn: AsyncConnection) -> None:
        await conn.execute("SELECT set_config('hazardwatch.lease', %s, false),"
                           " set_config('idle_in_transaction_session_timeout', %s, false)",
                           (term_setting(term), str(int(term.ttl * 1000))))
        await conn.commit()
    return configure


class TermMetrics(Collector):
    """The metrics of the current term's stages, served through the process registry.

    Each term builds its stages afresh with a registry of its own (metrics cannot be registered
    twice); this collector shows whichever is current, nothing on a standby."""

    def __init__(self) -> None:
        self.current: CollectorRegistry | None = None

    def collect(self) -> Iterable[Any]:
        reg = self.current
        return reg.collect() if reg is not None else []

    def describe(self) -> Iterable[Any]:
        return []  # no names reserved: they come and go with the terms


class Leadership:
    """Runs ``work(term)`` for each term this instance leads; cancels it when the term ends."""

    def __init__(self, elector: Elector) -> None:
        self.elector = elector
        self.term: Term | None = None
        self.offline_kept = False  # leading on through a database outage (see the module docstring)
        self.terms = 0
        self._prev = elector.role
        self._changed = asyncio.Event()
        elector.listen(self._on_role)

    def _on_role(self, role: str, term: Term | None, reason: str) -> None:
        if role == "offline" and self._prev == "leader" and self.term is not None and reason.startswith("database"):
            self.offline_kept = True
            log.warning("the database is unreachable: leading on through the local journal until it answers")
        elif role != "offline":
            self.offline_kept = False
        self._prev = role
        self._changed.set()

    def may_act(self) -> bool:
        """True while this instance may send messages: it leads by its own clock, or leads on offline."""
        t = self.term
        if t is None:
            return False
        if self.elector.leading() is t:
            return True
        return self.offline_kept and self.elector.role == "offline"

    @property
    def role(self) -> str:
        """leader | standby | offline (no database) | starting — what this instance does right now."""
        if self.may_act():
            return "leader"
        return "standby" if self.elector.role == "leader" else self.elector.role

    async def run(self, work: Callable[[Term], Coroutine[Any, Any, None]]) -> None:
        while True:
            term = await self.elector.wait_leading()
            self.term = term
            self.terms += 1
            job = asyncio.create_task(work(term), name=f"term-{term.epoch}")
            try:
                await self._until_over(term, job)
            finally:
                await stop(job)
                self.term = None
                self.offline_kept = False
            if job.cancelled():
                log.warning("term %d over: the leader's stages are stopped; standing by", term.epoch)
                continue
            exc = job.exception()
            if exc is not None and not is_fenced(exc):
                raise exc
            log.warning("term %d: %s; standing by until the lease says who leads", term.epoch,
                        "the database refused a write of this term" if exc is not None else "the stages returned")
            while self.elector.core.term is term:  # until the elector itself sees the term is over
                self._changed.clear()
                await self._changed.wait()

    async def _until_over(self, term: Term, job: asyncio.Task[None]) -> None:
        while not job.done():
            self._changed.clear()
            timeout: float | None
            if self.elector.leading() is term:
                timeout = self.elector.core.remaining(self.elector.monotonic()) + 0.001
            elif self.offline_kept and self.elector.role == "offline":
                timeout = None
            else:
                return
            changed = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait({job, changed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()


async def stop(job: asyncio.Task[None], every: float = 1.0) -> None:
    """Cancel ``job`` and wait until it ends, cancelling again while it does not.

    A stage whose wait swallowed one cancellation (``asyncio.wait_for`` on Python 3.11, a driver's
    notification loop) must not keep a stepped-down leader's stages alive."""
    while not job.done():
        job.cancel()
        await asyncio.wait({job}, timeout=every)
    if not job.cancelled():
        job.exception()  # retrieved: the caller looks at it


class ForwardedCommands:
    """The API's operator commands, handed to whichever instance leads (``api.context.Commands``)."""

    def __init__(self, client: CommandClient) -> None:
        self.client = client

    async def _submit(self, cmd: Command, alarm_id: int | None = None) -> None:
        out = await self.client.submit(cmd)
        if out.applied:
            return
        if out.state == "refused" and out.code == "unavailable":
            raise Unavailable("database", out.reason or "the database is not reachable", retry_after=5)
        if out.state == "refused" and out.code == "not_found" and alarm_id is not None:
            raise AlarmNotFound(alarm_id)
        if out.state == "refused":
            raise Refused(out.reason or "the command was refused")
        raise Unavailable("leader", f"the leader could not apply the command: {out.reason or out.state}; check the "
                                    "alarm before repeating it", retry_after=5)

    async def ack(self, alarm_id: int, by: str, note: str | None = None) -> None:
        await self._submit(Ack(by=by, alarm_id=alarm_id, note=note), alarm_id)

    async def resolve(self, alarm_id: int, by: str, cause: str, action: str) -> None:
        await self._submit(Resolve(by=by, alarm_id=alarm_id, cause=cause, action=action), alarm_id)

    async def shelve(self, alarm_id: int, by: str, reason: str, until: datetime) -> None:
        await self._submit(Shelve(by=by, alarm_id=alarm_id, reason=reason, until=until), alarm_id)

    async def unshelve(self, alarm_id: int, by: str) -> None:
        await self._submit(Unshelve(by=by, alarm_id=alarm_id), alarm_id)

    async def set_enterprise_state(self, enterprise: str, state: EnterpriseState, by: str) -> None:
        await self._submit(SetEnterpriseState(by=by, enterprise=enterprise, state=state))


class Refused(InvalidTransition):
    """The leader refused a command (not in a state that allows it …); the API answers 409 with the reason."""

    def __init__(self, reason: str) -> None:
        RulesError.__init__(self, reason)


def command_handler(rules: RulesService) -> Callable[[Command], Awaitable[None]]:
    """The leader's ``CommandDispatcher`` handler: applies a command to the rule stage."""
    async def handle(cmd: Command) -> None:
        try:
            if isinstance(cmd, Ack):
                await rules.ack(cmd.alarm_id, cmd.by, cmd.note)
            elif isinstance(cmd, Resolve):
                await rules.resolve(cmd.alarm_id, cmd.by, cmd.cause, cmd.action)
            elif isinstance(cmd, Shelve):
                await rules.shelve(cmd.alarm_id, cmd.by, cmd.reason, cmd.until)
            elif isinstance(cmd, Unshelve):
                await rules.unshelve(cmd.alarm_id, cmd.by)
            else:
                await rules.set_enterprise_state(cmd.enterprise, cmd.state, cmd.by)
        except AlarmNotFound as e:
            raise CommandRefused("not_found", str(e)) from None
        except InvalidTransition as e:
            raise CommandRefused("invalid", str(e)) from None
        except Unavailable as e:
            # the leader's database write failed: the operator hears it at once (503), as with one
            # instance, rather than after the command's deadline; the core was left as it was
            raise CommandRefused("unavailable", str(e)) from None
    return handle
