"""Operator commands through the database: any instance's API hands them to the leader.

An instance's API calls ``CommandClient.submit(command)``: one row in ``commands`` and a
``NOTIFY hw_commands`` in the same transaction; then it waits for the outcome. The leader's
``CommandDispatcher`` wakes on the notification (or its poll), claims the oldest pending row,
calls its handler, records *applied*, *refused* (with a code and a reason) or *failed*, and
``NOTIFY hw_command_done``. A client that hears nothing in time withdraws its command if no
leader took it — so a command the operator was told failed (503) is never applied later — and
raises ``Unavailable``.

Row states: pending → running → applied | refused | failed; pending → expired (withdrawn or past
its deadline). A leader that stops while applying leaves its row running; the next leader marks
it failed ("the leader changed while applying it"): the operator looks at the alarm and repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from park.db.lease import Fenced, Term, backoff, fence
from park.errors import HazardwatchError, Unavailable
from park.site import EnterpriseState

log = logging.getLogger("hazardwatch.commands")

SUBMITTED, DONE = "hw_commands", "hw_command_done"
KEEP_DONE = timedelta(days=30)  # finished commands are kept this long for inspection


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    by: str = Field(min_length=1, max_length=100)


class Ack(_Command):
    kind: Literal["ack"] = "ack"
    alarm_id: int
    note: str | None = None


class Resolve(_Command):
    kind: Literal["resolve"] = "resolve"
    alarm_id: int
    cause: str
    action: str


class Shelve(_Command):
    kind: Literal["shelve"] = "shelve"
    alarm_id: int
    reason: str
    until: AwareDatetime


class Unshelve(_Command):
    kind: Literal["unshelve"] = "unshelve"
    alarm_id: int


class SetEnterpriseState(_Command):
    kind: Literal["enterprise_state"] = "enterprise_state"
    enterprise: str
    state: EnterpriseState


Command = Annotated[Ack | Resolve | Shelve | Unshelve | SetEnterpriseState, Field(discriminator="kind")]
_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)

Handler = Callable[[Command], Awaitable[None]]


class CommandRefused(HazardwatchError):
    """A handler's answer that the command cannot be applied; ``code`` is for programs, the text for people.

    Codes in use: ``not_found`` (no such open alarm), ``invalid`` (not in this state), ``bad_command``
    (a malformed row), ``leader_changed``; handlers may add their own.
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code, self.reason = code, reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Outcome:
    id: int
    state: Literal["applied", "refused", "failed"]
    code: str | None = None
    reason: str | None = None

    @property
    def applied(self) -> bool:
        return self.state == "applied"


def dump(cmd: Command) -> tuple[str, str]:
    """(kind, args as JSON) as stored in the ``commands`` row."""
    args = cmd.model_dump(mode="json", exclude={"kind"})
    return cmd.kind, json.dumps(args, ensure_ascii=False)


def parse(kind: str, args: object) -> Command:
    """The command a row holds; ValidationError when it is malformed."""
    return _COMMAND.validate_python({**(args if isinstance(args, dict) else {}), "kind": kind})


class CommandClient:
    """Submits commands and waits for the leader's outcome. ``run()`` listens for outcomes.

    Without ``run()`` (or while its listener is reconnecting) ``submit`` still works: it polls the
    row every ``poll`` seconds as well as waiting for the notification.
    """

    def __init__(self, pool: AsyncConnectionPool, *, instance: str, timeout: float = 10.0, poll: float = 0.5) -> None:
        self.pool, self.instance, self.timeout, self.poll = pool, instance, timeout, poll
        self._waiting: dict[int, asyncio.Event] = {}
        self.listening = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                async with await listen_connection(self.pool) as conn:
                    await conn.execute(f"LISTEN {DONE}")
                    self.listening.set()
                    failures = 0
                    for ev in list(self._waiting.values()):
                        ev.set()  # anything finished while we were not listening: look again
                    async for n in conn.notifies():
                        with contextlib.suppress(ValueError):
                            if (waiter := self._waiting.get(int(n.payload))) is not None:
                                waiter.set()
            except (psycopg.Error, OSError) as e:
                self.listening.clear()
                log.warning("command outcomes: listener lost (%s); polling meanwhile", type(e).__name__)
                await asyncio.sleep(backoff(failures))
                failures += 1

    async def submit(self, cmd: Command, *, within: float | None = None) -> Outcome:
        """Hand ``cmd`` to the leader and wait for its outcome (applied, refused or failed).

        Raises ``Unavailable`` when the database cannot take it, or when no leader answered within
        ``within`` seconds (default: the client's ``timeout``) — saying whether the command was
        withdrawn (never applied) or may still be.
        """
        timeout = self.timeout if within is None else within
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        kind, args = dump(cmd)
        try:
            async with self.pool.connection(timeout=timeout) as conn, conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO commands (kind, args, origin, deadline) VALUES (%s, %s, %s, now() + make_interval("
                    "secs => %s)) RETURNING id", (kind, args, self.instance, timeout))
                row = await cur.fetchone()
                assert row is not None
                cid = int(row[0])
                await conn.execute("SELECT pg_notify(%s, %s)", (SUBMITTED, str(cid)))
        except (psycopg.Error, OSError) as e:  # PoolTimeout included
            raise Unavailable("database", f"the command could not be handed to the leader: the database is not "
                                          f"reachable ({type(e).__name__})") from e
        ev = self._waiting[cid] = asyncio.Event()
        try:
            if (out := await self._wait(cid, ev, deadline)) is not None:
                return out
            async with self.pool.connection(timeout=5) as conn:
                cur = await conn.execute(
                    "UPDATE commands SET state = 'expired', done_at = now(), reason = 'withdrawn: no leader took it'"
                    " WHERE id = %s AND state = 'pending' RETURNING id", (cid,))
                withdrawn = await cur.fetchone() is not None
            if withdrawn:
                raise Unavailable("leader", f"no leader took the command within {timeout:g} s; it was not applied "
                                            "— try again", retry_after=5)
            # taken by a leader: it is applying it right now; give it a little longer
            if (out := await self._wait(cid, ev, loop.time() + max(2.0, timeout / 2))) is not None:
                return out
            raise Unavailable("leader", "the leader took the command but has not answered yet; check the alarm "
                                        "before repeating it", retry_after=5)
        except (psycopg.Error, OSError) as e:
            raise Unavailable("database", f"the command's outcome is unknown: the database is not reachable "
                                          f"({type(e).__name__}); check the alarm before repeating it") from e
        finally:
            self._waiting.pop(cid, None)

    async def _wait(self, cid: int, ev: asyncio.Event, deadline: float) -> Outcome | None:
        loop = asyncio.get_running_loop()
        while True:
            ev.clear()  # before looking: a notification that comes while we look is not lost
            out = await self._outcome(cid)
            if out is not None:
                return out
            left = deadline - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.poll, left)):  # not wait_for: it can swallow a cancel on 3.11
                    await ev.wait()

    async def _outcome(self, cid: int) -> Outcome | None:
        async with self.pool.connection(timeout=5) as conn:
            cur = await conn.execute("SELECT state, code, reason FROM commands WHERE id = %s", (cid,))
            row = await cur.fetchone()
        if row is None or row[0] not in ("applied", "refused", "failed"):
            return None
        return Outcome(cid, row[0], row[1], row[2])


class CommandDispatcher:
    """The leader's side: applies pending commands one at a time with ``handler``.

    ``handler(command)`` returns when applied; raises ``CommandRefused`` to refuse,
    ``Unavailable`` to have it retried shortly (until its deadline). Any other exception is
    logged with its traceback and recorded as failed. With ``term``, every claim is fenced:
    a leader whose term is over takes nothing.
    """

    def __init__(self, pool: AsyncConnectionPool, handler: Handler, *, instance: str, term: Term | None = None,
                 poll: float = 1.0) -> None:
        self.pool, self.handler, self.instance, self.term, self.poll = pool, handler, instance, term, poll
        self.applied = 0
        self.listening = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                async with await listen_connection(self.pool) as listener:
                    await listener.execute(f"LISTEN {SUBMITTED}")
                    await self._fail_abandoned()
                    self.listening.set()
                    failures = 0
                    while True:
                        while await self.step():
                            pass
                        async for _ in listener.notifies(timeout=self.poll, stop_after=1):
                            pass
            except (psycopg.Error, OSError, Unavailable) as e:
                self.listening.clear()
                log.warning("command dispatcher: %s; retrying", e)
                await asyncio.sleep(backoff(failures))
                failures += 1

    async def step(self) -> bool:
        """Claim and apply the oldest pending command; False when there was none."""
        epoch = self.term.epoch if self.term else None
        async with self.pool.connection() as conn, conn.transaction():
            if self.term is not None:
                await fence(conn, self.term)
            cur = await conn.execute(
                "UPDATE commands SET state = 'running', taken_at = now(), taken_by = %s, epoch = %s"
                " WHERE id = (SELECT id FROM commands WHERE state = 'pending' AND deadline > now()"
                "             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, kind, args", (self.instance, epoch))
            row = await cur.fetchone()
        if row is None:
            return False
        cid, kind, args = int(row[0]), row[1], row[2]
        try:
            cmd = parse(kind, args)
            await self.handler(cmd)
        except ValidationError as e:
            await self._finish(cid, "refused", "bad_command", f"malformed {kind!r} command: {_first_error(e)}")
        except CommandRefused as e:
            await self._finish(cid, "refused", e.code, e.reason)
        except Unavailable:
            await self._finish(cid, "pending", None, None)
            raise
        except Fenced:
            raise  # the next leader fails this row: this instance writes nothing more
        except Exception as e:
            log.exception("command %d (%s) failed", cid, kind)
            await self._finish(cid, "failed", "error", f"the leader could not apply it ({type(e).__name__})")
        else:
            self.applied += 1
            await self._finish(cid, "applied", None, None)
        return True

    async def _finish(self, cid: int, state: str, code: str | None, reason: str | None) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE commands SET state = %s, code = %s, reason = %s,"
                " done_at = CASE WHEN %s = 'pending' THEN NULL ELSE now() END,"
                " taken_at = CASE WHEN %s = 'pending' THEN NULL ELSE taken_at END"
                " WHERE id = %s AND state = 'running' AND taken_by = %s",
                (state, code, reason, state, state, cid, self.instance))
            if state != "pending":
                await conn.execute("SELECT pg_notify(%s, %s)", (DONE, str(cid)))

    async def _fail_abandoned(self) -> None:
        """Rows a previous leader (or this instance before a restart) left running: say so; drop old ones.

        Runs when the dispatcher (re)starts, before it has taken anything: every running row is abandoned.
        """
        async with self.pool.connection() as conn, conn.transaction():
            if self.term is not None:
                await fence(conn, self.term)
            cur = await conn.execute(
                "UPDATE commands SET state = 'failed', code = 'leader_changed', done_at = now(),"
                " reason = 'the leader changed while applying it; check the alarm before repeating it'"
                " WHERE state = 'running' RETURNING id")
            for (cid,) in await cur.fetchall():
                await conn.execute("SELECT pg_notify(%s, %s)", (DONE, str(cid)))
            await conn.execute(
                "UPDATE commands SET state = 'expired', done_at = now(), reason = 'no leader took it in time'"
                " WHERE state = 'pending' AND deadline <= now()")
            await conn.execute("DELETE FROM commands WHERE done_at < now() - %s", (KEEP_DONE,))


async def listen_connection(pool: AsyncConnectionPool) -> AsyncConnection:
    """A connection of its own (autocommit, outside the pool) to the pool's database, for LISTEN."""
    info = pool.conninfo
    if callable(info):
        got = info()
        info = await got if inspect.isawaitable(got) else got
    kw: dict[str, Any] = pool.kwargs if isinstance(pool.kwargs, dict) else {}
    return await AsyncConnection.connect(str(info), **{**kw, "autocommit": True})


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', '')}" if where else str(err.get("msg", ""))
