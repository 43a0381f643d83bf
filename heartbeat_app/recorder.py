"""Session rows for the admin, written in bulk: one recorder per event loop.

Opens and closes are queued and written at the next tick; every
HEARTBEAT_CHECKPOINT_INTERVAL the recorder also writes ``last_seen``, RTT and
visibility of all local sessions in one bulk update, and beats the process's
ServerInstance row. A heartbeat never waits on the database. When the database
is down, everything stays queued and catches up when it is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection, transaction

from . import conf, sessionlog
from .instance import host, instance_id, started_at
from .models import ServerInstance, Session, lost_before, zombie_grace
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
        self.opens: dict[str, Row] = {}
        self.closes: dict[str, Row] = {}
        self.last_checkpoint = 0.0
        self.failing = False
        self._written: set[str] = set()

    # Called by the mixin; O(1), no I/O -----------------------------------------

    def opened(self, state: SessionState) -> None:
        """Queue a new session's row."""
        sessionlog.opened(state)
        if state.user_id is None and not conf.get("HEARTBEAT_RECORD_ANONYMOUS"):
            return
        self.local[state.id] = state
        self.ensure_running()

    def closed(self, state: SessionState) -> None:
        """Queue the end of a session's row."""
        sessionlog.closed(state, self.clock.wall())
        known = self.local.pop(state.id, None) is not None
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
        now = self.clock.wall()
        scheduler = self.runtime.service(Scheduler)
        silence = max(0.0, scheduler.now() - state.last_heard) if live else 0.0
        seen = now - silence
        grace = zombie_grace(state.interval, state.timeout)
        return {
            "id": state.id,
            "user_id": state.user_id,
            "user_key": state.user_key,
            "rooms": " ".join(state.rooms),
            "tab": state.tab,
            "instance_id": instance_id(),
            "channel_name": state.channel,
            "path": state.path[:300],
            "client_addr": state.client,
            "user_agent": state.user_agent,
            "opened_at": _dt(state.opened_at),
            "last_seen_at": _dt(seen),
            "stale_after": None if state.interval is None else _dt(
                seen + state.interval + state.phase),
            "zombie_after": None if grace is None else _dt(seen + grace),
            "interval": state.interval,
            "timeout": state.timeout,
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

    # The tick -------------------------------------------------------------------

    def ensure_running(self) -> None:
        if not conf.get("HEARTBEAT_RECORD_SESSIONS"):
            self.local.clear()
            self.closes.clear()
            return
        super().ensure_running()

    async def step(self, planned: float | None = None, *, force: bool = False,
                   final: bool = False) -> None:
        """Write what is due: new rows, closes, and the checkpoint when its time comes.

        ``final``: the process is stopping; its instance row gets ``stopped_at``.
        """
        now = self.clock.wall()
        checkpoint = force or now - self.last_checkpoint >= conf.get(
            "HEARTBEAT_CHECKPOINT_INTERVAL")
        new = [sid for sid in self.local if sid not in self._written]
        if not (checkpoint or new or self.closes):
            return
        for sid in new:
            self.opens[sid] = self._row(self.local[sid])
        updates = []
        if checkpoint:
            due = [state for sid, state in self.local.items() if sid not in self.opens]
            for count, state in enumerate(due, 1):
                updates.append(self._row(state))
                if count % ROW_BATCH == 0:
                    # Rows of thousands of sessions are built in slices, so other
                    # traffic is served in between.
                    await asyncio.sleep(0)
        opens, closes = dict(self.opens), dict(self.closes)
        try:
            await database_sync_to_async(write)(
                list(opens.values()), updates, list(closes.values()), len(self.local),
                _dt(now), stopped=final)
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
        self._written.update(opens)
        for sid in opens:
            self.opens.pop(sid, None)
        for sid in closes:
            self.closes.pop(sid, None)
            self._written.discard(sid)
        if checkpoint:
            self.last_checkpoint = now


def write(opens: list, updates: list, closes: list, session_count: int, now: datetime,
          stopped: bool = False) -> None:
    """One transaction: beat the instance, then every row of the tick in one statement.

    Rows are dicts of column values (``Session`` instances are taken too). New
    rows, checkpoints and closes are all one upsert, so the number of queries
    does not depend on the number of sessions, and a row that another process
    closed while its session still beats (a clock or network hiccup) is reopened
    by the next checkpoint. ``stopped``: the process is stopping; its instance
    row says so.
    """
    stopped_at = now if stopped else None
    with transaction.atomic():
        beat = ServerInstance.objects.filter(pk=instance_id()).update(
            last_beat=now, session_count=session_count, stopped_at=stopped_at)
        if not beat:
            ServerInstance.objects.create(
                id=instance_id(), host=host(), pid=os.getpid(), started_at=_dt(started_at()),
                last_beat=now, session_count=session_count, stopped_at=stopped_at)
        rows = [_as_row(row) for row in (*opens, *updates, *closes)]
        if rows:
            upsert(rows)
        reconcile(now)


def _as_row(row) -> Row:
    if isinstance(row, Session):
        return {field.attname: getattr(row, field.attname) for field in _fields()}
    return row


def _fields():
    return Session._meta.concrete_fields


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
    datetimes = {f.attname for f in fields if f.get_internal_type() == "DateTimeField"}
    payload = []
    for row in rows:
        item = dict(row)
        for name in datetimes:
            if item.get(name) is not None:
                item[name] = str(ops.adapt_datetimefield_value(item[name]))
        payload.append(item)
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
    """Close the open rows of processes that are gone (``instance_lost``).

    Runs with every write, so rows left open by a process that died while no
    other process ran are closed out by the next process to start.
    """
    cutoff = lost_before(now)
    lost = ServerInstance.objects.filter(last_beat__lt=cutoff, stopped_at__isnull=True)
    closed = Session.objects.filter(closed_at__isnull=True).filter(
        instance__in=lost).update(closed_at=now, close_code=int(CloseCode.ABNORMAL),
                                  close_reason=CloseReason.INSTANCE_LOST)
    return closed


def retention_cutoff(days: float, now: datetime | None = None) -> datetime:
    """Closed sessions older than this are pruned."""
    from django.utils import timezone

    return (now or timezone.now()) - timedelta(days=days)
