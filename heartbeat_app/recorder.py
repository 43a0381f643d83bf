"""Session rows for the admin, written in bulk: one recorder per event loop.

Opens and closes are queued and written at the next tick; ``last_seen``, RTT and
visibility of each local session every HEARTBEAT_CHECKPOINT_INTERVAL, a slice at each
tick (``checkpoint.Pace``). Every write beats the process's ServerInstance row on the
database's clock, at least every third of PRESENCE_INSTANCE_TTL whatever the interval
(30 s by default: about 630 rows a second for 19,000 sessions, not 3,800 at 5 s). A
heartbeat never waits on the database; while it is down, everything stays queued.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection, transaction
from django.db.models.functions import Now

from . import conf, sessionlog
from .checkpoint import EPSILON, Pace
from .instance import host, instance_id, started_at
from .models import ServerInstance, Session, lost_cutoff, zombie_grace
from .protocol import CloseCode, CloseReason
from .runtime import Runtime, Service
from .scheduler import Scheduler
from .state import SessionState

logger = logging.getLogger(__name__)

# A session's row as column values, made on the event loop without a model instance.
Row = dict[str, Any]
BATCH = 500
# Checkpoint rows built before the recorder yields to the event loop once.
ROW_BATCH = 500
# Closes kept while the database is down; beyond this the oldest are dropped.
MAX_PENDING = 100_000
# Beats (and sweeps for lost processes) per PRESENCE_INSTANCE_TTL, at the least: one
# slow write leaves two more before the other processes take this one for lost.
BEATS_PER_TTL = 3


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Recorder(Service):
    """Writes the sessions of one event loop to the database, in bulk."""

    name = "recorder"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self.local: dict[str, SessionState] = {}
        # Sessions whose first row is not written yet (an ordered set).
        self.fresh: dict[str, None] = {}
        self.closes: dict[str, Row] = {}
        # The local sessions whose rows are written, in the order they come round.
        self.pace = Pace()
        self.swept: float | None = None  # monotonic time of the last lost-instance sweep
        self.failing = False

    # Called by the mixin; O(1), no I/O -----------------------------------------

    def opened(self, state: SessionState) -> None:
        """Queue a new session's row."""
        sessionlog.opened(state)
        if state.user_id is None and not conf.get("HEARTBEAT_RECORD_ANONYMOUS"):
            return
        self.local[state.id] = state
        self.fresh[state.id] = None
        self.ensure_running()

    def closed(self, state: SessionState) -> None:
        """Queue the end of a session's row."""
        sessionlog.closed(state, self.clock.wall())
        known = self.local.pop(state.id, None) is not None
        self.fresh.pop(state.id, None)
        self.pace.discard(state.id)
        if state.user_id is None and not conf.get("HEARTBEAT_RECORD_ANONYMOUS"):
            return
        row = self._row(state, live=known)
        row.update(closed_at=_dt(self.clock.wall()), close_code=state.close_code,
                   close_reason=str(state.close_reason),
                   zombie_detected_at=_dt(state.zombie_wall))
        self.closes[state.id] = row
        if len(self.closes) > MAX_PENDING:
            self.closes.pop(next(iter(self.closes)))
        self.ensure_running()

    # Rows ---------------------------------------------------------------------

    def _row(self, state: SessionState, live: bool = True) -> Row:
        """A session's row as plain values: no model instance on the event loop."""
        return {
            **self._checkpoint_row(state, live),
            "user_id": state.user_id,
            "user_key": state.user_key,
            "tab": state.tab,
            "instance_id": instance_id(),
            "channel_name": state.channel,
            "path": state.path[:300],
            "client_addr": state.client,
            "user_agent": state.user_agent,
            "opened_at": _dt(state.opened_at),
            "interval": state.interval,
            "timeout": state.timeout,
        }

    def _checkpoint_row(self, state: SessionState, live: bool = True) -> Row:
        """What a checkpoint writes of a live session's row (CHECKPOINT_FIELDS)."""
        now = self.clock.wall()
        scheduler = self.runtime.service(Scheduler)
        silence = max(0.0, scheduler.now() - state.last_heard) if live else 0.0
        seen = now - silence
        grace = zombie_grace(state.interval, state.timeout)
        return {
            "id": state.id,
            "rooms": " ".join(state.rooms),
            "last_seen_at": _dt(seen),
            "stale_after": None if state.interval is None else _dt(
                seen + state.interval + state.phase),
            "zombie_after": None if grace is None else _dt(seen + grace),
            "recorded_at": _dt(now),
            "rtt_ms": _ms(state.rtt),
            "rtt_avg_ms": _ms(state.rtt_avg),
            "visible": state.visible,
            "frames_in": state.frames_in,
            "probes_sent": state.probes_sent,
            "last_probe_at": _dt(state.last_probe_wall),
            "zombie_detected_at": None,
            "closed_at": None,
            "close_code": None,
            "close_reason": "",
        }

    async def _rows(self, session_ids: list[str], checkpoint: bool = False) -> list[Row]:
        rows = []
        build = self._checkpoint_row if checkpoint else self._row
        for count, sid in enumerate(session_ids, 1):
            state = self.local.get(sid)
            if state is not None:  # not if it closed while rows were built
                rows.append(build(state))
            if count % ROW_BATCH == 0:
                # Rows of thousands of sessions (a reconnect storm's opens, a catch-up
                # after an outage) are built in slices, so other traffic is served
                # in between.
                await asyncio.sleep(0)
        return rows

    # The tick -------------------------------------------------------------------

    def ensure_running(self) -> None:
        if not conf.get("HEARTBEAT_RECORD_SESSIONS"):
            self.local.clear()
            self.fresh.clear()
            self.closes.clear()
            self.pace.clear()
            return
        super().ensure_running()

    async def step(self, planned: float | None = None, *, force: bool = False,
                   final: bool = False) -> None:
        """Write what is due: new rows, closes, and this tick's slice of the checkpoint.

        At least every third of PRESENCE_INSTANCE_TTL (or every checkpoint interval, if
        shorter) there is a write, which beats the instance, and it also closes out
        the rows of lost processes.
        ``force``: every row now (tests, the drain). ``final``: the process is
        stopping; its instance row gets ``stopped_at``.
        """
        now = self.clock.wall()
        mono = self.clock.monotonic()
        interval = conf.get("HEARTBEAT_CHECKPOINT_INTERVAL")
        due = self.pace.due(mono, interval)
        if force:
            due = list(self.pace)
        beat_every = min(interval, conf.get("PRESENCE_INSTANCE_TTL") / BEATS_PER_TTL)
        sweep = force or self.swept is None or mono - self.swept >= beat_every - EPSILON
        if not (due or self.fresh or self.closes or sweep):
            return
        fresh = list(self.fresh)
        opens = await self._rows(fresh)
        updates = await self._rows(due, checkpoint=True)
        closes = dict(self.closes)
        try:
            await database_sync_to_async(write, thread_sensitive=False, executor=_writer())(
                opens, updates, list(closes.values()), len(self.local), _dt(now),
                stopped=final, sweep=sweep)
        except Exception as exc:
            self.metrics.row_failures.inc()
            if not self.failing:
                self.failing = True
                logger.warning("session rows not written, will retry: %r", exc)
            return
        if self.failing:
            self.failing = False
            logger.warning("session rows written again after an outage")
        self.metrics.row_writes.inc()
        for sid in fresh:
            if sid in self.fresh:  # not if it closed during the write
                del self.fresh[sid]
                self.pace.add(sid, mono)
        self.pace.wrote(due, mono)
        for sid in closes:
            self.closes.pop(sid, None)
        if sweep:
            self.swept = mono


def write(opens: list, updates: list, closes: list, session_count: int, now: datetime,
          stopped: bool = False, sweep: bool = True) -> None:
    """One transaction: beat the instance, then the rows of the tick in two statements.

    Rows are dicts of column values (``Session`` instances too). New rows and closes
    are one upsert of whole rows; checkpoints one update of CHECKPOINT_FIELDS, which
    reopens a row another process closed while its session beats. The beat (and
    ``stopped_at`` when ``stopped``) is the database's time, the clock the other
    processes judge it on. ``sweep``: also close out the rows of lost processes.
    """
    stopped_at = Now() if stopped else None
    with transaction.atomic():
        beat = ServerInstance.objects.filter(pk=instance_id()).update(
            last_beat=Now(), session_count=session_count, stopped_at=stopped_at)
        if not beat:
            ServerInstance.objects.create(
                id=instance_id(), host=host(), pid=os.getpid(), started_at=_dt(started_at()),
                last_beat=Now(), session_count=session_count, stopped_at=stopped_at)
        # One row per session, the latest: an upsert may not touch a row twice
        # (PostgreSQL), and a session that closed while its open row was queued
        # (an outage) or built is in both.
        rows = {row["id"]: row for row in map(_as_row, (*opens, *closes))}
        if rows:
            upsert(list(rows.values()))
        checkpoints = [row for row in map(_as_checkpoint, updates) if row["id"] not in rows]
        if checkpoints:
            touch(checkpoints)
        if sweep:
            reconcile(now)


@functools.cache
def _writer() -> ThreadPoolExecutor:
    """The thread the session rows are written from, one per process.

    Not Django's thread-sensitive one: Channels awaits that thread for every message
    a consumer receives (``aclose_old_connections`` before each handler), so a
    checkpoint's upsert there held up every session's frames, pongs included, for
    as long as the statement ran.
    """
    return ThreadPoolExecutor(1, thread_name_prefix="heartbeat-rows")


def _as_row(row) -> Row:
    if isinstance(row, Session):
        return {field.attname: getattr(row, field.attname) for field in _fields()}
    return row


def _as_checkpoint(row) -> Row:
    row = _as_row(row)
    return {name: row[name] for name in CHECKPOINT_FIELDS}


def _fields():
    return Session._meta.concrete_fields


#: The columns of a live session's row that a checkpoint writes: what changes while it
#: lives, and the close columns cleared (a row another process closed by mistake reopens).
CHECKPOINT_FIELDS = (
    "id", "rooms", "last_seen_at", "stale_after", "zombie_after", "recorded_at", "rtt_ms",
    "rtt_avg_ms", "visible", "frames_in", "probes_sent", "last_probe_at",
    "zombie_detected_at", "closed_at", "close_code", "close_reason")


def _payload(rows: list[Row], fields, text=None) -> list[Row]:
    """Rows with their datetimes as the database's text (``text(value)``), for a JSON parameter."""
    text = text or _datetime_text()
    datetimes = [f.attname for f in fields if f.get_internal_type() == "DateTimeField"]
    payload = []
    for row in rows:
        item = dict(row)
        for name in datetimes:
            if item.get(name) is not None:
                item[name] = text(item[name])
        payload.append(item)
    return payload


def _django_text():
    adapt = connection.ops.adapt_datetimefield_value  # looked up once, not per value
    return lambda value: str(adapt(value))


def _datetime_text():
    """Django's text of a datetime for the database. On SQLite in UTC (the default) the rows'
    UTC datetimes get their naive ``str()`` directly, without Django's checks per value."""
    django = _django_text()
    if connection.vendor != "sqlite" or connection.timezone is not UTC:
        return django
    return lambda value: str(value.replace(tzinfo=None)) if value.tzinfo is UTC else django(value)


def touch(rows: list[Row]) -> None:
    """Write the checkpoint columns of many live rows: one statement, no insert attempt.

    A parameter list per row on SQLite (no JSON to take apart per column); one
    UPDATE ... FROM jsonb_to_recordset on PostgreSQL. A row deleted while its session
    lives comes back with the session's close.
    """
    fields = [Session._meta.get_field(name) for name in CHECKPOINT_FIELDS]
    names = [f.attname for f in fields if not f.primary_key]
    vendor = connection.vendor
    quote = connection.ops.quote_name
    table = quote(Session._meta.db_table)
    if vendor == "sqlite":
        params = [[row[n] for n in names] + [row["id"]] for row in _payload(rows, fields)]
        sets = ", ".join(f"{quote(n)} = %s" for n in names)
        with connection.cursor() as cursor:
            cursor.executemany(f"UPDATE {table} SET {sets} WHERE {quote('id')} = %s", params)
    elif vendor == "postgresql":
        types = ", ".join(f"{quote(f.attname)} {f.db_type(connection)}" for f in fields)
        sets = ", ".join(f"{quote(n)} = j.{quote(n)}" for n in names)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS s SET {sets} FROM jsonb_to_recordset(%s::jsonb) AS j({types}) "
                f"WHERE s.{quote('id')} = j.{quote('id')}",
                [json.dumps(_payload(rows, fields))])
    else:
        Session.objects.bulk_update([Session(**row) for row in rows], names, batch_size=BATCH)


def upsert(rows: list[Row]) -> None:
    """Insert or update many session rows in ONE statement.

    Django's bulk_update builds a CASE WHEN per row and field and needs a query per
    ~47 rows on SQLite (999 parameters); here the rows travel as one JSON parameter
    that the database unpacks (json_each on SQLite, jsonb_to_recordset on
    PostgreSQL). Other databases fall back to the ORM.
    """
    vendor = connection.vendor
    if vendor not in ("sqlite", "postgresql"):
        objects = [Session(**row) for row in rows]
        Session.objects.bulk_create(objects, batch_size=BATCH, ignore_conflicts=True)
        Session.objects.bulk_update(objects, [f.attname for f in _fields() if not f.primary_key],
                                    batch_size=BATCH)
        return
    ops = connection.ops
    fields = _fields()
    payload = _payload(rows, fields)
    quote = ops.quote_name
    table = quote(Session._meta.db_table)
    names = [f.attname for f in fields]
    columns = ", ".join(quote(n) for n in names)
    updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names if n != "id")
    if vendor == "postgresql":
        types = ", ".join(f"{quote(f.attname)} {f.db_type(connection)}" for f in fields)
        select = (f"SELECT {columns} FROM jsonb_to_recordset(%s::jsonb) AS j({types})")
    else:
        picks = ", ".join(f"json_extract(value, '$.{n}')" for n in names)
        # "WHERE true" keeps SQLite from reading ON CONFLICT as a join constraint.
        select = f"SELECT {picks} FROM json_each(%s) WHERE true"
    sql = (f"INSERT INTO {table} ({columns}) {select} "
           f"ON CONFLICT ({quote('id')}) DO UPDATE SET {updates}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [json.dumps(payload)])


def reconcile(now: datetime) -> int:
    """Close the open rows of processes that are gone (``instance_lost``) at ``now``.

    Runs once an interval with the writes, so rows left open by a process that
    died while no other process ran are closed out by the next process to start.
    A process is gone when its last beat is older than the instance TTL on the
    database's clock, the one its beats were written with: a process whose own
    clock is off closes no one by mistake (issue #11).
    """
    lost = ServerInstance.objects.filter(last_beat__lt=lost_cutoff(), stopped_at__isnull=True)
    closed = Session.objects.filter(closed_at__isnull=True).filter(
        instance__in=lost).update(closed_at=now, close_code=int(CloseCode.ABNORMAL),
                                  close_reason=CloseReason.INSTANCE_LOST)
    return closed


def retention_cutoff(days: float, now: datetime | None = None) -> datetime:
    """Closed sessions older than this are pruned."""
    from django.utils import timezone

    return (now or timezone.now()) - timedelta(days=days)
