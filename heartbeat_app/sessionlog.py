"""One structured log line per session open and close, for log pipelines (HEARTBEAT_SESSION_LOG).

``"kv"``: ``event=close session=… member=… instance=… code=4408 reason=timeout
duration_s=36.1 rtt_ms=12.3``; ``"json"``: the same fields as one JSON object;
``None``: nothing. Logged on ``heartbeat_app.sessions`` at INFO.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import conf
from .instance import instance_id
from .state import SessionState

logger = logging.getLogger("heartbeat_app.sessions")


def opened(state: SessionState) -> None:
    """Log a session's open."""
    _log({"event": "open", **_common(state), "path": state.path})


def closed(state: SessionState, now: float) -> None:
    """Log a session's end, with why and how long it lasted."""
    _log({"event": "close", **_common(state), "code": state.close_code,
          "reason": str(state.close_reason), "duration_s": round(now - state.opened_at, 3),
          "rtt_ms": None if state.rtt_avg is None else round(state.rtt_avg * 1000, 1)})


def _common(state: SessionState) -> dict[str, Any]:
    return {"session": state.id, "member": state.user_key, "instance": instance_id()}


def _log(fields: dict[str, Any]) -> None:
    style = conf.get("HEARTBEAT_SESSION_LOG")
    if style is None or not logger.isEnabledFor(logging.INFO):
        return
    if style == "json":
        logger.info("%s", json.dumps(fields, separators=(",", ":")))
    else:
        logger.info("%s", " ".join(f"{k}={_kv(v)}" for k, v in fields.items()))


def _kv(value: Any) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text) if (" " in text or "=" in text or '"' in text) else text
