"""The identity of this server process, shared by presence and the session records."""

from __future__ import annotations

import os
import secrets
import socket
import time

_identity: dict = {}


def instance_id() -> str:
    """``host:pid:random``, made once per process (anew after a fork)."""
    if _identity.get("pid") != os.getpid():
        _identity.update(
            pid=os.getpid(),
            host=socket.gethostname(),
            id=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
            started=time.time(),
        )
    return _identity["id"]


def started_at() -> float:
    """When this process first asked for its identity (epoch seconds)."""
    instance_id()
    return _identity["started"]


def host() -> str:
    """This process's host name."""
    instance_id()
    return _identity["host"]


def instance_info(layer) -> dict:
    """What other processes need to know of this one: host, pid, start, channel prefix."""
    prefix = getattr(layer, "client_prefix", None)
    return {"host": host(), "pid": os.getpid(), "started_ms": int(started_at() * 1000),
            "channel_prefix": f"specific.{prefix}!" if prefix else ""}
