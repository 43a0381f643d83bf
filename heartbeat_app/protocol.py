"""Wire protocol v1: message types, frame validation and close codes.

Pure functions and constants only: no Django, no asyncio, so everything here is
tested without an event loop.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1

# Message types.
HELLO = "hello"
PING = "ping"
PONG = "pong"
PRESENCE_STATE = "presence_state"
PRESENCE_DIFF = "presence_diff"
ERROR = "error"
# Sent to a session whose anonymous key rests on a token, when its client asked for
# one (``?anon=``, empty at first): the key, and the token that keeps it on a reload.
IDENTITY = "identity"
# Sent right before a server close that carries a hint: Daphne drops the close
# reason on the floor (its serverClose() ignores it), so the hint travels in a
# frame of its own as well as in the reason.
CLOSE = "close"

HEARTBEAT_TYPES = frozenset({PING, PONG})

# Limits on heartbeat frames. A ping is ~40 bytes; anything near these is hostile.
MAX_HEARTBEAT_FRAME = 4096  # characters of one ping/pong frame
MAX_ID_LENGTH = 128  # characters of a string id
MAX_BRACKETS = 64  # "[" and "{" in one heartbeat frame; a ping has one
MAX_INT_ID = 2**53 - 1  # Number.MAX_SAFE_INTEGER: beyond it browsers lose precision
MAX_RTT_MS = 600_000  # a reported round trip longer than ten minutes is not one

# Error slugs carried by {"type": "error", "code": ...}.
ERR_INVALID_JSON = "invalid_json"
ERR_INVALID_MESSAGE = "invalid_message"
ERR_FRAME_TOO_LARGE = "frame_too_large"
ERR_BINARY_NOT_SUPPORTED = "binary_not_supported"
# A presence room the consumer refused (its can_join_presence()); carries ``room``.
ERR_ROOM_FORBIDDEN = "room_forbidden"

# Cheap pre-filter: only frames that could be a heartbeat are parsed by the mixin,
# so user frames are never decoded twice.
_HEARTBEAT_HINT = re.compile(r'"type"\s*:\s*"p[io]ng"')
# An oversize frame is refused unparsed only when it opens as a heartbeat would.
_HEARTBEAT_OPENING = re.compile(r'\s*\{\s*"type"\s*:\s*"p[io]ng"')
_TAB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Whole-string matches only (fullmatch): "$" lets a trailing newline through, and
# room names are joined with "\n" in the store's keys.
ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_RETRY_HINT = re.compile(r"retry_after_ms=(\d+)")


class CloseReason(enum.StrEnum):
    """Why a session ended, as recorded on it, sent with signals and shown in the admin."""

    CLOSED = "closed"  # the client closed, or the transport ended with a code
    TRANSPORT_LOST = "transport_lost"  # 1006: the connection dropped without a close
    TIMEOUT = "timeout"  # closed by the server as a zombie (4408)
    ADMIN = "admin"  # an operator's disconnect (4000 by default)
    RATE_LIMITED = "rate_limited"  # too many heartbeat frames (4429)
    SERVER_CLOSED = "server_closed"  # the app's own consumer closed it
    SERVER_ERROR = "server_error"  # the consumer raised (1011)
    SERVER_SHUTDOWN = "server_shutdown"  # the server process stopped
    INSTANCE_LOST = "instance_lost"  # its server process died; closed by another one


class LeaveReason(enum.StrEnum):
    """Why a meta left a room, carried as ``reason`` by every leaving meta."""

    CLOSED = "closed"  # its session ended
    TIMEOUT = "timeout"  # its session was closed as a zombie
    EXPIRED = "expired"  # its server stopped refreshing it
    INSTANCE_LOST = "instance_lost"  # its server process is gone
    UPDATE = "update"  # replaced by a newer version of the same session's meta
    REPLACED = "replaced"  # replaced by a new session of the same tab
    LEFT = "left"  # the session left the room while staying connected


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by the server, the client and the admin."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SERVER_CLOSE = 4000
    DRAINING = 4001
    # 1013 cannot be sent by Daphne (autobahn refuses close codes outside 1000 and
    # 3000-4999), so a busy server says "try again later" with this one everywhere.
    SERVER_BUSY = 4013
    PROTOCOL_ERROR = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    HEARTBEAT_TIMEOUT = 4408
    TOO_MANY_MESSAGES = 4429

    @property
    def description(self) -> str:
        """A short sentence for logs, docs and the admin."""
        return _DESCRIPTIONS[self]

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect after this code."""
        return self not in TERMINAL_CODES


_DESCRIPTIONS = {
    CloseCode.NORMAL: "normal closure",
    CloseCode.GOING_AWAY: "going away",
    CloseCode.ABNORMAL: "abnormal closure: the transport was lost",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.INTERNAL_ERROR: "server error",
    CloseCode.SERVICE_RESTART: "service restart",
    CloseCode.TRY_AGAIN_LATER: "try again later",
    CloseCode.SERVER_CLOSE: "closed by the server",
    CloseCode.DRAINING: "server draining or restarting",
    CloseCode.SERVER_BUSY: "server busy: try again later",
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.UNAUTHENTICATED: "not authenticated",
    CloseCode.FORBIDDEN: "not allowed",
    CloseCode.HEARTBEAT_TIMEOUT: "heartbeat timeout: closed as a zombie",
    CloseCode.TOO_MANY_MESSAGES: "too many messages",
}

TERMINAL_CODES = frozenset(
    {
        CloseCode.POLICY_VIOLATION,
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNAUTHENTICATED,
        CloseCode.FORBIDDEN,
    }
)


def should_reconnect(code: int | None) -> bool:
    """Whether a client should reconnect after a close with ``code``.

    Unknown codes in 4000-4499 are reconnectable and 4500-4999 terminal (the
    convention Centrifugo uses); other unknown codes are reconnectable.
    """
    if code is None:
        return True
    try:
        return CloseCode(code).reconnect
    except ValueError:
        return not 4500 <= code <= 4999


def close_reason(text: str, retry_after_ms: int | None = None) -> str:
    """Build a close reason, with an optional retry hint the client honours."""
    # RFC 6455 limits the reason to 123 bytes of UTF-8; the hint is never cut.
    hint = "" if retry_after_ms is None else f"; retry_after_ms={int(retry_after_ms)}"
    room = 123 - len(hint.encode())
    return text.encode()[:room].decode(errors="ignore") + hint


def parse_retry_hint(reason: str | None) -> int | None:
    """Return the ``retry_after_ms`` hint carried in a close reason, if any."""
    if not reason:
        return None
    match = _RETRY_HINT.search(reason)
    return int(match.group(1)) if match else None


class ProtocolError(ValueError):
    """A heartbeat frame the server refuses; the connection stays open."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def as_message(self) -> dict[str, Any]:
        """The ``error`` message sent back to the client."""
        return {"type": ERROR, "code": self.code, "detail": self.detail}


@dataclass(frozen=True)
class Heartbeat:
    """A validated ping or pong from the client."""

    type: str
    id: str | int | None = None
    visible: bool | None = None
    rtt_ms: float | None = None  # the round trip the client measured for its last ping


def looks_like_heartbeat(text: str) -> bool:
    """Whether a text frame may be a heartbeat and is worth parsing."""
    return _HEARTBEAT_HINT.search(text) is not None


def parse_heartbeat_text(text: str) -> Heartbeat | None:
    """Parse a text frame; return a Heartbeat, or None if it is not one.

    Raises ProtocolError for a frame that claims to be a heartbeat but is
    malformed (bad JSON, wrong types, oversize).
    """
    if not looks_like_heartbeat(text):
        return None
    if len(text) > MAX_HEARTBEAT_FRAME:
        # Never decode a big frame on the heartbeat path (deep nesting, huge ids):
        # refuse it if it opens as a heartbeat, else it is the user's.
        if _HEARTBEAT_OPENING.match(text):
            raise ProtocolError(
                ERR_FRAME_TOO_LARGE,
                f"Heartbeat frames are limited to {MAX_HEARTBEAT_FRAME} characters.",
            )
        return None
    if text.count("[") + text.count("{") > MAX_BRACKETS:
        # Nesting is refused before decoding: how deep json.loads goes depends on
        # the Python version (3.13 parses what 3.11 refuses).
        raise ProtocolError(
            ERR_INVALID_MESSAGE, f"Heartbeat frames may hold at most {MAX_BRACKETS} brackets."
        )
    content = decode_object_frame(text)
    return None if content is None else parse_heartbeat(content)


def decode_object_frame(text: str) -> Any:
    """Decode a frame that claims one of our types; None if it is not JSON at all.

    Only a frame shaped like a JSON object is taken as a broken message of ours
    (invalid_json); other text that mentions our types belongs to the app.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        if text.lstrip().startswith("{"):
            raise ProtocolError(ERR_INVALID_JSON, "The frame is not valid JSON.") from None
        return None


def parse_heartbeat(content: Any) -> Heartbeat | None:
    """Validate decoded JSON; return a Heartbeat, or None if it is not one."""
    if not isinstance(content, dict):
        return None
    kind = content.get("type")
    if not isinstance(kind, str) or kind not in HEARTBEAT_TYPES:
        return None
    ident = content.get("id")
    if ident is not None:
        _check_id(ident)
    elif kind == PONG:
        raise ProtocolError(ERR_INVALID_MESSAGE, "A pong must carry the id of the ping.")
    visible = content.get("visible")
    if visible is not None and not isinstance(visible, bool):
        raise ProtocolError(ERR_INVALID_MESSAGE, '"visible" must be true or false.')
    rtt = content.get("rtt_ms")
    if rtt is not None and (isinstance(rtt, bool) or not isinstance(rtt, (int, float))
                            or not 0 <= rtt <= MAX_RTT_MS):
        raise ProtocolError(ERR_INVALID_MESSAGE,
                            f'"rtt_ms" must be a number of milliseconds from 0 to {MAX_RTT_MS}.')
    return Heartbeat(kind, ident, visible, None if rtt is None else float(rtt))


def _check_id(ident: Any) -> None:
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise ProtocolError(ERR_INVALID_MESSAGE, '"id" must be a string or an integer.')
    if isinstance(ident, str) and len(ident) > MAX_ID_LENGTH:
        raise ProtocolError(
            ERR_INVALID_MESSAGE, f'"id" is limited to {MAX_ID_LENGTH} characters.'
        )
    if isinstance(ident, int) and abs(ident) > MAX_INT_ID:
        raise ProtocolError(ERR_INVALID_MESSAGE, '"id" is out of the safe integer range.')


def valid_tab_id(value: Any) -> bool:
    """Whether a client-supplied tab id is acceptable."""
    return isinstance(value, str) and _TAB_ID.fullmatch(value) is not None


def valid_room_name(value: Any) -> bool:
    """Whether a presence room name is acceptable: 1 to 80 of ``A-Za-z0-9_.-``."""
    return isinstance(value, str) and ROOM_NAME.fullmatch(value) is not None


def hello(session: str, tab: str, interval_ms: int | None, timeout_ms: int | None,
          server_time: int) -> dict[str, Any]:
    """The first message of every session."""
    return {
        "type": HELLO,
        "session": session,
        "tab": tab,
        "interval_ms": interval_ms,
        "timeout_ms": timeout_ms,
        "server_time": server_time,
        "version": PROTOCOL_VERSION,
    }


def pong(ident: str | int | None, server_time: int) -> dict[str, Any]:
    """The answer to a client ping."""
    message: dict[str, Any] = {"type": PONG, "server_time": server_time}
    if ident is not None:
        message["id"] = ident
    return message


def probe(ident: str) -> dict[str, Any]:
    """A server ping sent to a silent connection."""
    return {"type": PING, "id": ident}


def close_notice(code: int, reason: str, retry_after_ms: int | None = None) -> dict[str, Any]:
    """The frame sent right before a server close that carries a hint."""
    message: dict[str, Any] = {"type": CLOSE, "code": int(code), "reason": reason}
    if retry_after_ms is not None:
        message["retry_after_ms"] = int(retry_after_ms)
    return message


# Meta fields that are the server's business, never sent to clients.
PRIVATE_META = frozenset({"channel", "instance"})
# Meta fields another client could replay to act as the session they describe: a tab
# id names a tab whose reload replaces its meta. Clients tell metas apart by
# ``session`` and ``ref``, ids the server never accepts from a client.
REPLAYABLE_META = frozenset({"tab"})
_HIDDEN_META = PRIVATE_META | REPLAYABLE_META


def public_members(members: dict[str, dict]) -> dict[str, dict]:
    """Members (key -> {"metas": [...]}) as clients see them: no private or replayable field."""
    return {key: {"metas": [{k: v for k, v in meta.items() if k not in _HIDDEN_META}
                            for meta in value["metas"]]}
            for key, value in members.items()}


def room_forbidden(room: str) -> dict[str, Any]:
    """The refusal of a presence room: it names the room the client asked for, nothing more."""
    return {"type": ERROR, "code": ERR_ROOM_FORBIDDEN, "room": room,
            "detail": "This connection may not join this room."}


def identity(key: str, token: str) -> dict[str, Any]:
    """A session's own member key, and the token that lets it keep that key."""
    return {"type": IDENTITY, "key": key, "token": token}


def presence_state(room: str, members: dict[str, dict] | None,
                   count: int | None = None,
                   seqs: dict[str, int] | None = None) -> dict[str, Any]:
    """The state of a room, sent to a session when it joins.

    ``count`` is the number of members; a big room's state carries only the count
    (``members`` None). ``seqs`` maps a diff origin to the last ``seq`` the state
    includes (docs/protocol.md#diff-sequence-numbers).
    """
    message: dict[str, Any] = {"type": PRESENCE_STATE, "room": room}
    if members is not None:
        message["members"] = members
    message["count"] = len(members) if count is None and members is not None else count
    if seqs is not None:
        message["seqs"] = seqs
    return message


def presence_diff(room: str, joins: dict[str, dict], leaves: dict[str, dict],
                  seq: int | None = None, origin: str | None = None) -> dict[str, Any]:
    """What changed in a room since the last diff; every leaving meta has a ``reason``.

    ``seq`` numbers the diffs of one ``origin`` (a room's sequence in one server
    process) one by one, so a client that sees a number skipped knows it missed one.
    """
    message = {"type": PRESENCE_DIFF, "room": room, "joins": joins, "leaves": leaves}
    if seq is not None and origin is not None:
        message["seq"], message["origin"] = seq, origin
    return message


def dumps(message: dict[str, Any]) -> str:
    """Encode a message compactly (an ``Encoded`` one is not encoded again)."""
    if type(message) is Encoded:
        return message.text
    return json.dumps(message, separators=(",", ":"))


class Encoded(dict):
    """A message encoded once for the many sessions it goes to (a room's state to each
    of its joiners): still the message, with its text kept. Not to be changed."""

    __slots__ = ("text",)

    def __init__(self, message: dict[str, Any]):
        super().__init__(message)
        self.text = json.dumps(message, separators=(",", ":"))
