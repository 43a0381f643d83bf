"""Presence messages that clients send: join, leave, presence_update, broadcast.

Pure, like protocol.py (no Django, no asyncio): shapes, limits and validation of
the requests a client makes to drive its presence while connected, and the
messages the server answers with. docs/protocol.md describes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .protocol import (
    ERR_INVALID_MESSAGE,
    ERROR,
    MAX_BRACKETS,
    ProtocolError,
    decode_object_frame,
    valid_room_name,
)

JOIN = "join"
LEAVE = "leave"
PRESENCE_UPDATE = "presence_update"
BROADCAST = "broadcast"
BROADCASTS = "broadcasts"  # several signals of one room in one frame (big rooms)
PRESENCE_COUNT = "presence_count"
REQUEST_TYPES = frozenset({JOIN, LEAVE, PRESENCE_UPDATE, BROADCAST})

# Error slugs of refused requests (the connection stays open).
ERR_NOT_IN_ROOM = "not_in_room"
ERR_ROOM_FULL = "room_full"
ERR_INVALID_STATE = "invalid_state"
ERR_INVALID_ROOM = "invalid_room"

MAX_REQUEST_FRAME = 8192  # characters of one request frame
MAX_STATE_BYTES = 1024  # a presence_update's state, encoded
MAX_DATA_BYTES = 4096  # a broadcast's data, encoded
MAX_EVENT_LENGTH = 64
_EVENT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HINT = re.compile(r'"type"\s*:\s*"(?:join|leave|presence_update|broadcast)"')


@dataclass(frozen=True)
class Request:
    """A validated presence request from a client."""

    type: str
    room: str
    state: dict[str, Any] | None = None
    event: str = ""
    data: Any = None


def looks_like_request(text: str) -> bool:
    """Whether a text frame may be a presence request and is worth parsing."""
    return _HINT.search(text) is not None


def parse_request_text(text: str) -> Request | None:
    """Parse a text frame; a Request, None if it is not one, ProtocolError if it is a bad one."""
    if not looks_like_request(text):
        return None
    if len(text) > MAX_REQUEST_FRAME:
        raise ProtocolError(ERR_INVALID_MESSAGE,
                            f"Presence requests are limited to {MAX_REQUEST_FRAME} characters.")
    if text.count("[") + text.count("{") > MAX_BRACKETS:
        # Nesting refused before decoding, as for heartbeats (protocol.py says why).
        raise ProtocolError(ERR_INVALID_MESSAGE,
                            f"Presence requests may hold at most {MAX_BRACKETS} brackets.")
    content = decode_object_frame(text)
    return None if content is None else parse_request(content)


def parse_request(content: Any) -> Request | None:
    """Validate decoded JSON; a Request, or None if it is not one."""
    if not isinstance(content, dict) or content.get("type") not in REQUEST_TYPES:
        return None
    kind, room = content["type"], content.get("room")
    if not valid_room_name(room):
        raise ProtocolError(ERR_INVALID_MESSAGE,
                            '"room" must be 1 to 80 letters, digits, "_", "-" or ".".')
    if kind == PRESENCE_UPDATE:
        state = content.get("state")
        if not isinstance(state, dict) or len(_encoded(state)) > MAX_STATE_BYTES:
            raise ProtocolError(ERR_INVALID_STATE,
                                f'"state" must be a JSON object of at most {MAX_STATE_BYTES} '
                                "bytes.")
        return Request(kind, room, state=state)
    if kind == BROADCAST:
        event = content.get("event")
        if not isinstance(event, str) or _EVENT.fullmatch(event) is None:
            raise ProtocolError(ERR_INVALID_MESSAGE,
                                f'"event" must be 1 to {MAX_EVENT_LENGTH} letters, digits or '
                                '"_.:-".')
        data = content.get("data")
        if len(_encoded(data)) > MAX_DATA_BYTES:
            raise ProtocolError(ERR_INVALID_MESSAGE,
                                f'"data" is limited to {MAX_DATA_BYTES} bytes, encoded.')
        return Request(kind, room, event=event, data=data)
    return Request(kind, room)


def _encoded(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def refusal(code: str, room: str, detail: str) -> dict[str, Any]:
    """An ``error`` about one room: the request is refused, the connection stays."""
    return {"type": ERROR, "code": code, "room": room, "detail": detail}


def presence_count(room: str, count: int) -> dict[str, Any]:
    """A big room's member count, in place of its diffs."""
    return {"type": PRESENCE_COUNT, "room": room, "count": count}


def broadcast(room: str, event: str, sender: str, data: Any) -> dict[str, Any]:
    """An ephemeral signal from one member to the others in a room."""
    return {"type": BROADCAST, "room": room, "event": event, "from": sender, "data": data}


def signal_text(event: str, sender: str, data: Any) -> str:
    """One signal of a ``broadcasts`` frame, encoded (compact, as protocol.dumps)."""
    return json.dumps({"event": event, "from": sender, "data": data}, separators=(",", ":"))


def broadcasts_text(room: str, signals: list[str]) -> str:
    """A ``broadcasts`` frame from signals encoded by signal_text(): what a member of a big
    room gets in place of one ``broadcast`` frame per signal."""
    head = json.dumps({"type": BROADCASTS, "room": room}, separators=(",", ":"))[:-1]
    return f'{head},"signals":[{",".join(signals)}]}}'
