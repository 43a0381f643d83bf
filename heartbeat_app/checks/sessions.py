"""Checks of the session rows' settings: recording, checkpoints, retention."""

from __future__ import annotations

from django.core.checks import Error, Tags, Warning, register

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
            hint="Use the default 5.0: every process then writes last seen, RTT and "
                 "visibility of all its sessions in one statement every 5 s.",
            id="heartbeat_app.E031",
        ))
        checkpoint = None
    if not is_seconds(retention, allow_none=True, allow_zero=True):
        problems.append(Error(
            "HEARTBEAT_SESSION_RETENTION_DAYS must be a number of days, 0 or more, or None, "
            f"not {retention!r}.",
            hint="Use the default 30, or None to keep closed sessions forever.",
            id="heartbeat_app.E032",
        ))
    if record is True and checkpoint is not None:
        problems += _check_checkpoint_against_instance_ttl(checkpoint)
    return problems


def _check_checkpoint_against_instance_ttl(checkpoint: float) -> list:
    # A process beats its server-instance row only in its checkpoints; the admin and
    # the other processes take an instance silent for PRESENCE_INSTANCE_TTL for lost,
    # show its sessions as zombies and close its rows with instance_lost.
    ttl = conf.get("PRESENCE_INSTANCE_TTL")
    tick = conf.get("HEARTBEAT_TICK")
    if not is_seconds(ttl, allow_none=False):
        return []  # heartbeat_app.E044 reports it
    if not is_seconds(tick, allow_none=False):
        tick = 1.0  # heartbeat_app.E003 reports it
    if checkpoint + tick >= ttl:
        return [Error(
            f"HEARTBEAT_CHECKPOINT_INTERVAL ({checkpoint:g} s, plus a tick of {tick:g} s) "
            f"is not shorter than PRESENCE_INSTANCE_TTL ({ttl:g} s): a process beats its "
            "server-instance row only at its checkpoints, so between two of them the admin "
            "and the other processes take it for lost: its sessions show as zombies and "
            "their rows are closed as instance_lost.",
            hint=f"Keep the checkpoint interval at most half the instance TTL: "
                 f"{ttl / 2:g} s or less, or raise PRESENCE_INSTANCE_TTL.",
            id="heartbeat_app.E033",
        )]
    if checkpoint > ttl / 2:
        return [Warning(
            f"HEARTBEAT_CHECKPOINT_INTERVAL ({checkpoint:g} s) is more than half of "
            f"PRESENCE_INSTANCE_TTL ({ttl:g} s): after one slow database write the admin "
            "and the other processes take this process for lost and close its sessions' "
            "rows as instance_lost.",
            hint=f"Use {ttl / 2:g} s or less (the defaults are 5.0 and 15.0), or raise "
                 "PRESENCE_INSTANCE_TTL.",
            id="heartbeat_app.W030",
        )]
    return []
