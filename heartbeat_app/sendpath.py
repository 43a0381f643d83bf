"""The shortest way out for the mixin's own text frames (hello, pong, probe, presence).

A consumer's ``base_send`` is the end of a chain of wrappers: Channels' session
middleware (``InstanceSessionWrapper.send``, which acts only on ``http.response.start``)
and the admission gate's watch of the handshake (which acts only on accept and close).
Neither does anything with a ``websocket.send``, yet every probe and pong went through
both: two coroutines and a lazy session object's attribute reads per frame (the session
wrapper's own code alone was 2.2 % of a saturated process's samples at 19,000 sessions,
docs/benchmarks.md, *19k-xeon-profile*). ``frames_out``
finds, once per consumer, the innermost send that a ``websocket.send`` reaches unchanged.
A wrapper it does not know (an application's own middleware) is kept, frames and all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels.sessions import InstanceSessionWrapper

Send = Callable[[dict[str, Any]], Awaitable[None]]

#: The attribute a send wrapper of this package sets to the send it passes frames to.
FRAMES_TO = "heartbeat_frames_to"


def passes_frames(wrapper: Send, to: Send) -> Send:
    """Mark ``wrapper`` as passing every ``websocket.send`` unchanged to ``to``."""
    setattr(wrapper, FRAMES_TO, to)
    return wrapper


def frame_send(send: Send) -> Send:
    """The innermost send that a ``websocket.send`` from ``send`` reaches unchanged."""
    while True:
        owner = getattr(send, "__self__", None)
        if (type(owner) is InstanceSessionWrapper and send.__func__ is InstanceSessionWrapper.send
                and "websocket.send" not in owner.save_message_types):
            send = owner.real_send
            continue
        inner = getattr(send, FRAMES_TO, None)
        if inner is None:
            return send
        send = inner


def frames_out(consumer: Any) -> Send:
    """The consumer's send for its ``websocket.send`` frames, found once and kept."""
    send = consumer.__dict__.get("_heartbeat_frames_out")
    if send is None:
        send = consumer.__dict__["_heartbeat_frames_out"] = frame_send(consumer.base_send)
    return send
