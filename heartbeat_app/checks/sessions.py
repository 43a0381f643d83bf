"""Checks of the session rows' settings: recording, checkpoints, retention."""

from __future__ import annotations

from django.core.checks import Error, Tags, register

from .. import conf
from .values import is_seconds


@register(Tags.compatibility)
def check_sessions(app_configs=None, **kwargs) -> list:
    """Validate HEARTBEAT_RECORD_SESSIONS, the checkpoint interval and the retention."""
    problems: list = []
    record = conf.get("HEARTBEAT_RECORD_SESSIONS")
    checkpoint = conf.get("HEARTBEAT_CHECKPOINT_INTERVAL")
    retention = conf.get("HEARTBEAT_SESSION_RETENTION_DAYS")
    log = conf.get("HEARTBEAT_SESSION_LOG")
    if log not in (None, "kv", "json"):
        problems.append(Error(
            f'HEARTBEAT_SESSION_LOG must be "kv", "json" or None, not {log!r}.',
            hint='"kv" logs key=value lines, "json" one JSON object a line.',
            id="heartbeat_app.E035",
        ))
    anonymous = conf.get("HEARTBEAT_RECORD_ANONYMOUS")
    if not isinstance(anonymous, bool):
        problems.append(Error(
            f"HEARTBEAT_RECORD_ANONYMOUS must be True or False, not {anonymous!r}.",
            hint="True (the default) records anonymous visitors' sessions too; False keeps "
                 "only signed-in users' rows.",
            id="heartbeat_app.E034",
        ))
    if not isinstance(record, bool):
        problems.append(Error(
            f"HEARTBEAT_RECORD_SESSIONS must be True or False, not {record!r}.",
            hint="True (the default) writes a row per session for the admin; False writes none.",
            id="heartbeat_app.E030",
        ))
    if not is_seconds(checkpoint, allow_none=False):
        problems.append(Error(
            "HEARTBEAT_CHECKPOINT_INTERVAL must be a positive number of seconds, "
            f"not {checkpoint!r}.",
            hint="Use the default 30.0: every process then writes last seen, RTT and "
                 "visibility of each of its sessions once every 30 s, a slice a tick.",
            id="heartbeat_app.E031",
        ))
    if not is_seconds(retention, allow_none=True, allow_zero=True):
        problems.append(Error(
            "HEARTBEAT_SESSION_RETENTION_DAYS must be a number of days, 0 or more, or None, "
            f"not {retention!r}.",
            hint="Use the default 30, or None to keep closed sessions forever.",
            id="heartbeat_app.E032",
        ))
    return problems
