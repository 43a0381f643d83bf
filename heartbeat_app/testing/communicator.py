"""HeartbeatCommunicator: Channels' WebsocketCommunicator for consumers with HeartbeatMixin.

On connect it reads what the mixin sends before the consumer's own frames
(``hello``, a ``presence_state`` per room, ``identity``) and keeps them as
attributes, so a test's first ``receive_*()`` gets what the consumer sent. It
answers server probes itself, like a live client, until told to go silent.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from channels.testing import WebsocketCommunicator

from .. import presence_messages, protocol
from ..runtime import get_runtime
from .errors import HeartbeatTestError
from .frames import Message, _frame
from .rooms import PresenceRequests

# What a room tells its members after they joined: set aside for receive_presence_diff().
PRESENCE_NEWS = frozenset({protocol.PRESENCE_DIFF, presence_messages.PRESENCE_COUNT})
# Seconds between the tracker's ticks run while a helper waits for presence news.
POLL = 0.02


def _with_query(path: str, **params: str) -> str:
    parts = urlsplit(path)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode(query + list(params.items()))))


def _describe(message: Message) -> str:
    if message.get("type") == "websocket.close":
        return f"close {message.get('code')}"
    frame = _frame(message)
    if frame is not None:
        return str(frame.get("type", "a JSON frame"))
    return str(message.get("type"))


class _Outbox(asyncio.Queue):
    """The application's ``send``: probes are answered here, presence diffs set aside."""

    def __init__(self, communicator: HeartbeatCommunicator):
        super().__init__()
        self.communicator = communicator

    async def put(self, message: Message) -> None:
        communicator = self.communicator
        if communicator._answer(message):
            return
        if not communicator.inline_presence and _is_presence_news(message):
            communicator._presence.put_nowait(message)
            return
        await super().put(message)


def _is_presence_news(message: Message) -> bool:
    text = message.get("text")
    return (isinstance(text, str) and text.startswith('{"type":"presence_')
            and (_frame(message) or {}).get("type") in PRESENCE_NEWS)


class HeartbeatCommunicator(PresenceRequests, WebsocketCommunicator):
    """A WebsocketCommunicator that speaks the heartbeat protocol as a live client does.

    After ``connect()``: ``hello``, ``presence_states`` (room -> message),
    ``presence_refusals`` (room -> error), ``identity`` (or None) and ``consumer``
    (the consumer instance). Server probes are answered at once and never
    delivered, unless ``go_silent()`` was called; ``probes_answered`` counts them.
    ``presence_diff`` and ``presence_count`` frames are set aside for
    receive_presence_diff() (``inline_presence=True``: they arrive with the rest).
    Everything else arrives in order through the usual ``receive_*()`` methods.
    """

    def __init__(self, application, path: str, headers=None, subprotocols=None,
                 spec_version=None, *, user=None, tab: str | None = None,
                 inline_presence: bool = False):
        if tab is not None:
            path = _with_query(path, tab=tab)
        super().__init__(application, path, headers, subprotocols, spec_version)
        if user is not None:
            self.scope["user"] = user
        self._output_queue = _Outbox(self)
        self._held: deque[Message] = deque()  # taken out of order, kept for receive_*()
        self.inline_presence = inline_presence
        self._presence: asyncio.Queue = asyncio.Queue()
        self._presence_held: deque[Message] = deque()
        self._pings = itertools.count(1)
        self.hello: dict[str, Any] | None = None
        self.close_notice: dict[str, Any] | None = None
        self.presence_states: dict[str, dict[str, Any]] = {}
        self.presence_refusals: dict[str, dict[str, Any]] = {}
        self.identity: dict[str, Any] | None = None
        self.consumer = None
        self.silent = False
        self.visible: bool | None = None  # reported on every ping once set
        self.probes_answered = 0

    # What the server said on connect ----------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The session id from ``hello``."""
        return self.hello["session"] if self.hello else None

    @property
    def tab(self) -> str | None:
        """The tab id the server gave this connection (from ``hello``)."""
        return self.hello.get("tab") if self.hello else None

    @property
    def heartbeat_session(self):
        """The server's SessionState of this connection (its visibility, RTT, close code)."""
        return getattr(self.consumer, "heartbeat_session", None)

    @property
    def member_key(self) -> str | None:
        """This connection's member key, as other clients see it in presence."""
        session = self.heartbeat_session
        if session is not None:
            return session.user_key
        return self.identity["key"] if self.identity else None

    async def connect(self, timeout: float = 1) -> tuple[bool, Any]:
        """Connect, then read ``hello`` and the frames that come with it; as Channels' connect().

        Raises HeartbeatTestError when a room's ``presence_state`` does not come
        within ``timeout`` (the presence store is down, say).
        """
        from .clock import active_clock

        clock = active_clock()
        if clock is not None:
            clock.install()  # before the consumer asks for the loop's runtime
        connected, detail = await super().connect(timeout)
        if not connected:
            return connected, detail
        first = await self._take(lambda message: True, timeout, "hello")
        frame = _frame(first) or {}
        if frame.get("type") == protocol.CLOSE:
            self.close_notice = frame  # sent away (a drain): the close follows
            return connected, detail
        if frame.get("type") != protocol.HELLO:
            self._held.appendleft(first)
            raise HeartbeatTestError(
                f"The first frame was {_describe(first)}, not hello: does the consumer "
                "use HeartbeatMixin?")
        self.hello = frame
        closer = get_runtime().closers.get(frame["session"])
        self.consumer = getattr(closer, "__self__", None)
        await self._read_presence(timeout)
        await _yield()  # the rest of accept() (signal receivers) runs
        return connected, detail

    def _expected_rooms(self) -> tuple[list[str], bool]:
        consumer = self.consumer
        if consumer is None or getattr(consumer, "channel_layer", None) is None:
            return [], False
        try:
            rooms = list(consumer.get_presence_rooms())
        except Exception:  # the consumer fails on its own; nothing to wait for
            return [], False
        return rooms, bool(rooms and getattr(consumer, "heartbeat_anonymous_token", None))

    async def _read_presence(self, timeout: float) -> None:
        rooms, identity = self._expected_rooms()
        pending = set(rooms)

        def answers_a_room(message: Message) -> bool:
            frame = _frame(message) or {}
            kind = frame.get("type")
            return frame.get("room") in pending and kind in (protocol.PRESENCE_STATE,
                                                             protocol.ERROR)

        while pending:
            frame = _frame(await self._take(
                answers_a_room, timeout, f"presence_state of {sorted(pending)}"))
            pending.discard(frame["room"])
            if frame["type"] == protocol.PRESENCE_STATE:
                self.presence_states[frame["room"]] = frame
                continue
            self.presence_refusals[frame["room"]] = frame
            if frame.get("code") == protocol.ERR_ROOM_FORBIDDEN:
                return  # the connection is refused: a close follows, no identity
        if identity:
            self.identity = _frame(await self._take(
                lambda m: (_frame(m) or {}).get("type") == protocol.IDENTITY, timeout,
                "identity"))

    # The client's side of the heartbeat ---------------------------------------------

    def _answer(self, message: Message) -> bool:
        """Answer a server probe at once unless silent; True if it was one (and answered)."""
        if self.silent or message.get("type") != "websocket.send":
            return False
        text = message.get("text")
        if not isinstance(text, str) or not text.startswith('{"type":"ping"'):
            return False
        frame = _frame(message)
        if frame is None or set(frame) != {"type", "id"}:
            return False
        self.probes_answered += 1
        self.input_queue.put_nowait({"type": "websocket.receive", "text": protocol.dumps(
            {"type": protocol.PONG, "id": frame["id"]})})
        return True

    async def send_input(self, message: Message) -> None:
        """Send an ASGI message to the application; a silent communicator sends no frames."""
        if self.silent and message.get("type") == "websocket.receive":
            raise HeartbeatTestError(
                "This communicator is silent (go_silent()): a silent client sends nothing. "
                "Call resume() first.")
        await super().send_input(message)

    async def ping(self, *, timeout: float = 1) -> dict[str, Any]:
        """Send a ping (with ``visible`` once set_visible() was called) and return its pong."""
        if self.silent:
            raise HeartbeatTestError(
                "ping() on a silent communicator: after go_silent() it sends nothing, so no "
                "pong can come. Call resume() first, or expect the server's probe instead.")
        ident = f"c{next(self._pings)}"
        frame: dict[str, Any] = {"type": protocol.PING, "id": ident}
        if self.visible is not None:
            frame["visible"] = self.visible
        await self.send_json_to(frame)
        return _frame(await self._take(
            lambda m: (_frame(m) or {}).get("type") == protocol.PONG
            and _frame(m).get("id") == ident,
            timeout, f"pong to ping {ident!r}"))

    async def set_visible(self, visible: bool = True, *, timeout: float = 1) -> dict[str, Any]:
        """Report the tab as visible or hidden (a ping with ``visible``); returns the pong."""
        self.visible = bool(visible)
        return await self.ping(timeout=timeout)

    async def go_silent(self) -> None:
        """Behave as a dead client: answer no probe, send nothing, until resume()."""
        self.silent = True

    async def resume(self) -> None:
        """Undo go_silent(): probes are answered again, frames may be sent."""
        self.silent = False

    # Presence requests --------------------------------------------------------------

    async def receive_output(self, timeout: float = 1) -> Message:
        """The next message from the application (what a helper set aside comes first).

        As Channels' receive_output(), but an application that raises fails it at once,
        not after the timeout.
        """
        if self._held:
            return self._held.popleft()
        if self.output_queue.empty() and not self.future.done():
            getter = asyncio.ensure_future(self.output_queue.get())
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait({getter, self.future}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
            timeout = max(0, timeout - (loop.time() - started))
        return await super().receive_output(timeout)

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> bool:
        """Whether nothing (answered probes aside) arrives within ``timeout``."""
        if self._held:
            return False
        return await super().receive_nothing(timeout, interval)

    async def receive_close(self, *, timeout: float = 1) -> Message:
        """The server's close (``{"type": "websocket.close", "code", "reason"}``).

        Frames sent before it stay for receive_*() (a silent client's probe, say).
        """
        return await self._take(lambda m: m.get("type") == "websocket.close", timeout,
                                "the server's close")

    async def _take(self, match: Callable[[Message], bool], timeout: float, what: str, *,
                    queue: asyncio.Queue | None = None, held: deque[Message] | None = None,
                    poll: Callable[[], Awaitable[None]] | None = None) -> Message:
        """The first message that matches, keeping the others in order for receive_*()."""
        queue = self.output_queue if queue is None else queue
        held = self._held if held is None else held
        for index, message in enumerate(held):
            if match(message):
                del held[index]
                return message
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            message = await self._next(queue, deadline, what, timeout, poll)
            if match(message):
                return message
            held.append(message)

    async def _next(self, queue: asyncio.Queue, deadline: float, what: str, timeout: float,
                    poll: Callable[[], Awaitable[None]] | None = None) -> Message:
        """The next message of ``queue``; fails on a close, the app's end, or the deadline.

        ``poll`` runs every POLL seconds while nothing comes (the tracker's tick: work
        that landed after the last one, a store call on Redis, goes out too).
        """
        main = self.output_queue
        loop = asyncio.get_running_loop()
        while True:
            closed = next((m for m in self._held if m.get("type") == "websocket.close"), None)
            if closed is not None:
                reason = f", {closed['reason']!r}" if closed.get("reason") else ""
                raise HeartbeatTestError(f"Waiting for {what}, but the server closed the "
                                         f"connection (code {closed.get('code')}{reason}).")
            if not queue.empty():
                return queue.get_nowait()
            if queue is not main and not main.empty():
                self._held.append(main.get_nowait())  # kept in order; a close ends the wait
                continue
            if self.future.done():
                self.future.result()  # the application's exception, if it raised
                raise HeartbeatTestError(f"Waiting for {what}, but the application ended.")
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = ", ".join(_describe(m) for m in self._held) or "nothing"
                raise HeartbeatTestError(
                    f"No {what} within {timeout} s (received meanwhile: {seen}).")
            getters = [(queue, asyncio.ensure_future(queue.get()))]
            if queue is not main:
                getters.append((main, asyncio.ensure_future(main.get())))
            await asyncio.wait({task for _, task in getters} | {self.future},
                               timeout=remaining if poll is None else min(remaining, POLL),
                               return_when=asyncio.FIRST_COMPLETED)
            got = None
            for source, getter in getters:
                if not getter.done():
                    getter.cancel()  # cancelled while waiting: its item stays in the queue
                elif source is queue:
                    got = getter.result()
                else:
                    self._held.append(getter.result())
            if got is not None:
                return got
            if poll is not None and queue.empty():
                await poll()

    # As a context manager --------------------------------------------------------------

    async def __aenter__(self) -> HeartbeatCommunicator:
        connected, detail = await self.connect()
        if not connected:
            raise HeartbeatTestError(f"The connection was refused ({detail}).")
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._future is not None and not self.future.done():
            await self.disconnect()


async def _yield(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)
