"""The presence requests of HeartbeatCommunicator: join, leave, states, signals, news.

Mixed into HeartbeatCommunicator, which provides what these rely on: the frames
it has read (``_take``), and sending (``send_json_to``).
"""

from __future__ import annotations

from typing import Any

from .. import presence_messages, protocol
from .errors import HeartbeatTestError
from .frames import Message, _frame

# A room no test joins: leaving it is refused (not_in_room) once the requests before are done.
BARRIER_ROOM = "heartbeat-testing-barrier"


class PresenceRequests:
    """join(), leave(), set_presence(), broadcast() and the presence news a test waits for."""

    async def join(self, room: str, *, timeout: float = 1) -> dict[str, Any]:
        """Join ``room`` (a ``join`` request); returns its ``presence_state``.

        A refusal (``room_forbidden``, ``room_full``) raises HeartbeatTestError and
        is kept in ``presence_refusals``.
        """
        await self.send_json_to({"type": presence_messages.JOIN, "room": room})

        def answers(message: Message) -> bool:
            frame = _frame(message) or {}
            return frame.get("room") == room and frame.get("type") in (
                protocol.PRESENCE_STATE, protocol.ERROR)

        frame = _frame(await self._take(answers, timeout, f"presence_state of {room!r}"))
        if frame["type"] == protocol.PRESENCE_STATE:
            self.presence_states[room] = frame
            self.presence_refusals.pop(room, None)
            return frame
        self.presence_refusals[room] = frame
        raise HeartbeatTestError(f"join of room {room!r} refused: {frame['code']} "
                                 f"({frame.get('detail', '')})")

    async def leave(self, room: str, *, timeout: float = 1) -> None:
        """Leave ``room`` and stay connected (a ``leave`` request); returns once done."""
        await self._request({"type": presence_messages.LEAVE, "room": room}, timeout)
        self.presence_states.pop(room, None)

    async def set_presence(self, room: str, state: dict[str, Any], *,
                           timeout: float = 1) -> None:
        """Set this session's ``state`` in ``room`` (``presence_update``); returns once taken.

        The room sees it in the next tick's diff (receive_presence_diff() runs it).
        """
        await self._request({"type": presence_messages.PRESENCE_UPDATE, "room": room,
                             "state": state}, timeout)

    async def broadcast(self, room: str, event: str, data: Any = None, *,
                        timeout: float = 1) -> None:
        """Send an ephemeral signal to the others in ``room``; returns once sent on."""
        await self._request({"type": presence_messages.BROADCAST, "room": room,
                             "event": event, "data": data}, timeout)

    async def receive_broadcast(self, room: str, event: str | None = None, *,
                                timeout: float = 1) -> dict[str, Any]:
        """The next ``broadcast`` of ``room`` (and ``event``); other frames keep their place.

        A big room's ``broadcasts`` frame counts as its signals, each returned as the
        ``broadcast`` frame it stands for; the others wait for the next calls.
        """
        def signals(message: Message) -> list[dict[str, Any]]:
            frame = _frame(message) or {}
            if frame.get("room") != room:
                return []
            if frame.get("type") == presence_messages.BROADCAST:
                return [frame]
            if frame.get("type") != presence_messages.BROADCASTS:
                return []
            return [presence_messages.broadcast(room, s.get("event"), s.get("from"), s.get("data"))
                    for s in frame.get("signals") or () if isinstance(s, dict)]

        def wanted(frame: dict[str, Any]) -> bool:
            return event is None or frame.get("event") == event

        message = await self._take(lambda m: any(map(wanted, signals(m))), timeout,
                                   f"broadcast in room {room!r}")
        found = signals(message)
        signal = next(f for f in found if wanted(f))
        others = [f for f in found if f is not signal]
        self._held.extendleft({"type": "websocket.send", "text": protocol.dumps(f)}
                              for f in reversed(others))
        return signal

    async def _request(self, frame: dict[str, Any], timeout: float) -> None:
        """Send a request that has no reply when it succeeds, and wait until it is served."""
        await self.send_json_to(frame)
        # One worker serves a session's requests in order, so the refusal of this
        # leave comes back once the request before it is done.
        await self.send_json_to({"type": presence_messages.LEAVE, "room": BARRIER_ROOM})

        def error(message: Message) -> bool:
            return (_frame(message) or {}).get("type") == protocol.ERROR

        what = (f"the answer to {frame['type']} of room {frame['room']!r} (does the "
                "consumer set presence_client_messages = False?)")
        answer = _frame(await self._take(error, timeout, what))
        if answer.get("room") == BARRIER_ROOM:
            return
        await self._take(lambda m: (_frame(m) or {}).get("room") == BARRIER_ROOM, timeout,
                         what)
        if answer.get("room"):
            self.presence_refusals[answer["room"]] = answer
        raise HeartbeatTestError(f"{frame['type']} of room {frame['room']!r} refused: "
                                 f"{answer['code']} ({answer.get('detail', '')})")

    # Receiving -----------------------------------------------------------------------

    async def receive_presence_diff(self, room: str, *, joins: str | int | None = None,
                                    leaves: str | int | None = None,
                                    timeout: float = 1) -> dict[str, Any]:
        """The next ``presence_diff`` of ``room`` (where ``joins`` / ``leaves`` that key).

        Other frames, and the diffs passed over, keep their place. Under a
        HeartbeatClock the tracker's tick runs now (and again while waiting), so
        presence work queued so far (joins, visibility, leaves due) goes out.
        """
        def is_diff(frame: dict[str, Any]) -> bool:
            return ((joins is None or str(joins) in frame["joins"])
                    and (leaves is None or str(leaves) in frame["leaves"]))

        what = f"presence_diff of room {room!r}" + (
            f" joining {str(joins)!r}" if joins is not None else "") + (
            f" where {str(leaves)!r} leaves" if leaves is not None else "")
        return await self._receive_news(protocol.PRESENCE_DIFF, room, is_diff, what, timeout)

    async def receive_presence_count(self, room: str, *, timeout: float = 1) -> dict[str, Any]:
        """The next ``presence_count`` of a big (count-only) room."""
        return await self._receive_news(presence_messages.PRESENCE_COUNT, room,
                                        lambda frame: True, f"presence_count of room {room!r}",
                                        timeout)

    async def _receive_news(self, kind: str, room: str, wanted, what: str,
                            timeout: float) -> dict[str, Any]:
        def match(message: Message) -> bool:
            frame = _frame(message) or {}
            return frame.get("type") == kind and frame.get("room") == room and wanted(frame)

        queue, held = ((self.output_queue, self._held) if self.inline_presence
                       else (self._presence, self._presence_held))
        while not queue.empty():
            held.append(queue.get_nowait())
        from .clock import active_clock

        clock = active_clock()
        poll = clock.flush if clock is not None and clock.drives() else None
        if poll is not None and not any(match(message) for message in held):
            await poll()
        return _frame(await self._take(match, timeout, what, queue=queue, held=held,
                                       poll=poll))
