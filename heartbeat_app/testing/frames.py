"""Frames as the testing kit reads them: the JSON a consumer sent, if any."""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


def _frame(message: Message) -> dict[str, Any] | None:
    """The JSON object a ``websocket.send`` message carries, else None."""
    if message.get("type") != "websocket.send" or not isinstance(message.get("text"), str):
        return None
    try:
        frame = json.loads(message["text"])
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None
