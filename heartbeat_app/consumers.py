"""HeartbeatMixin: heartbeats and zombie detection in front of a Channels consumer.

``class ChatConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer)``: the mixin hooks
the low-level ``websocket_*`` handlers and ``__call__``, so the consumer's ``connect``,
``receive``/``receive_json`` and ``disconnect`` work without calling ``super()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import conf, protocol
from .admission import Gate, held
from .daphne_pace import stop_reading
from .drain import prepare as prepare_drain
from .layers import survive_outages
from .limits import TokenBucket
from .options import FROM_SETTINGS, HeartbeatOptions
from .presence_consumer import PresenceMixin
from .protocol import CloseCode, CloseReason, ProtocolError
from .recorder import Recorder
from .runtime import get_runtime
from .scheduler import Scheduler
from .sendpath import frames_out
from .signals import session_closed, session_opened, zombie_detected
from .state import SessionState

logger = logging.getLogger(__name__)

__all__ = ["FROM_SETTINGS", "HeartbeatMixin"]

_REASON_BY_SERVER_CODE = {
    CloseCode.HEARTBEAT_TIMEOUT: CloseReason.TIMEOUT,
    CloseCode.DRAINING: CloseReason.SERVER_SHUTDOWN,
    CloseCode.SERVER_CLOSE: CloseReason.ADMIN,
    CloseCode.TOO_MANY_MESSAGES: CloseReason.RATE_LIMITED,
}


class HeartbeatMixin(HeartbeatOptions, PresenceMixin):
    """Answers pings, probes silent connections, closes zombies with 4408, tracks presence."""

    #: The live session's state once accepted, else None.
    heartbeat_session: SessionState | None = None

    # ASGI plumbing -----------------------------------------------------------

    @property
    def channel_receive(self):
        """The channel layer's receive, made to survive a layer outage."""
        return self._heartbeat_channel_receive

    @channel_receive.setter
    def channel_receive(self, receive):
        # Channels assigns it in __call__: a Redis outage must not end every consumer with 1011.
        self._heartbeat_channel_receive = survive_outages(receive)

    async def __call__(self, scope, receive, send):
        # A pump of our own reads inbound messages: pings answered while a handler is busy.
        inbox: asyncio.Queue = asyncio.Queue()
        self._heartbeat_task = asyncio.current_task()  # the server's task of this connection
        pump = asyncio.ensure_future(self._heartbeat_pump(receive, inbox))

        async def receive_from_inbox():
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            return item

        cancelled = False
        try:
            await super().__call__(scope, receive_from_inbox, send)
        except asyncio.CancelledError:
            cancelled = True  # the server is shutting down (or dropped the app)
            raise
        finally:
            pump.cancel()
            self._presence_stop()
            try:
                await pump
            except (asyncio.CancelledError, Exception):
                pass
            session = self.heartbeat_session
            if session is not None and not session.closed:
                # The consumer stopped without a disconnect: it raised, or was cancelled.
                if cancelled:
                    await self._heartbeat_end(CloseCode.GOING_AWAY, CloseReason.SERVER_SHUTDOWN)
                else:
                    await self._heartbeat_end(CloseCode.INTERNAL_ERROR, CloseReason.SERVER_ERROR)

    async def _heartbeat_pump(self, receive, inbox: asyncio.Queue) -> None:
        try:
            while True:
                message = await receive()
                kind = message.get("type")
                if kind == "websocket.receive":
                    session = self.heartbeat_session
                    text = message.get("text")
                    if session is not None and (
                        session.closed or session.close_code is not None
                    ):
                        # Closed or closing on the server's side (a zombie, a 4429, an
                        # operator): late heartbeats are dropped, never answered.
                        if text is not None and protocol.looks_like_heartbeat(text):
                            continue
                    elif session is not None:
                        self._heartbeat_scheduler.touch(session)
                        session.frames_in += 1
                        if not session.inbound.take(self._heartbeat_runtime.clock.monotonic()) \
                                or inbox.qsize() >= conf.get("HEARTBEAT_INBOX_MAX"):
                            # Over its frame budget, or its consumer far behind: dropped
                            # unread, and the session closed 4429 with a hint.
                            await self._heartbeat_too_many(session)
                            continue
                        if text is not None and (
                            await self._heartbeat_handle_text(session, text)
                            if protocol.looks_like_heartbeat(text)
                            else await self._presence_offer(session, text, self._heartbeat_allow)
                        ):
                            continue
                elif kind == "websocket.disconnect":
                    await self._heartbeat_end(message.get("code"))
                    inbox.put_nowait(message)
                    return
                inbox.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("heartbeat receive loop failed")
            inbox.put_nowait(exc)

    # Connection lifecycle ---------------------------------------------------

    async def accept(self, subprotocol=None, headers=None):
        """Accept the connection, then greet it with ``hello`` and start watching it."""
        with held(self.scope):  # in flight for the admission gate until presence joined
            await super().accept(subprotocol, headers)
            await self._heartbeat_open()

    async def close(self, code=None, reason=None):
        """Close from the server side, recording why for the session's history."""
        if isinstance(code, int) and code is not True:
            code = int(code)  # autobahn refuses int subclasses such as CloseCode
        session = self.heartbeat_session
        if session is not None and session.close_code is None:
            session.close_code = code if isinstance(code, int) and code is not True else 1000
            session.close_reason = _REASON_BY_SERVER_CODE.get(
                session.close_code, CloseReason.SERVER_CLOSED
            )
        await super().close(code=code, reason=reason)

    async def websocket_disconnect(self, message):
        """Tear the heartbeat session down, then run the consumer's own disconnect."""
        await self._heartbeat_end(message.get("code"))
        await super().websocket_disconnect(message)

    async def websocket_receive(self, message):
        """Pass a non-heartbeat frame on to the consumer's handlers."""
        if self._heartbeat_decodes_json():
            text = message.get("text")
            if text is None:
                await self._heartbeat_error(ProtocolError(
                    protocol.ERR_BINARY_NOT_SUPPORTED,
                    "This endpoint takes JSON text frames, not binary ones.",
                ))
                return
            try:
                content = await self.decode_json(text)
            except (ValueError, RecursionError):
                await self._heartbeat_error(ProtocolError(
                    protocol.ERR_INVALID_JSON, "The frame is not valid JSON."
                ))
                return
            await self.receive_json(content)
            return
        await super().websocket_receive(message)

    def _heartbeat_decodes_json(self) -> bool:
        # Only when the consumer keeps Channels' own JSON receive() can the mixin decode
        # for it, turning bad JSON into an error message, not a connection-killing exception.
        return (
            isinstance(self, AsyncJsonWebsocketConsumer)
            and type(self).receive is AsyncJsonWebsocketConsumer.receive
        )

    async def _heartbeat_open(self) -> None:
        runtime = get_runtime()
        if runtime.draining:
            # Accepted during a drain (the admission gate was not in front): sent away.
            retry = runtime.service(Gate).retry_after_ms("draining")  # soon, elsewhere
            await self._heartbeat_close_with_hint(CloseCode.DRAINING, "server restarting", retry)
            return
        interval = self.get_heartbeat_interval()
        timeout = self.get_heartbeat_timeout() if interval is not None else None
        tab = self.get_heartbeat_tab()
        headers = dict(self.scope.get("headers") or [])
        client = self.scope.get("client") or ("", "")
        user = self.scope.get("user")
        session = SessionState(
            tab=tab,
            interval=interval,
            timeout=timeout,
            user_key=self.get_heartbeat_user_key(tab),
            user_id=user.pk if getattr(user, "is_authenticated", False) else None,
            path=self.scope.get("path", ""),
            client=f"{client[0]}:{client[1]}" if client and client[0] else "",
            user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:300],
            channel=getattr(self, "channel_name", "") or "",
            opened_at=runtime.clock.wall(),
            bucket=TokenBucket(self.get_heartbeat_rate_limit(), conf.get("HEARTBEAT_RATE_BURST")),
            inbound=TokenBucket(conf.get("HEARTBEAT_MESSAGE_RATE"),
                                conf.get("HEARTBEAT_MESSAGE_BURST")),
            on_probe=self._heartbeat_send_probe,
            on_zombie=self._heartbeat_zombie,
        )
        self.heartbeat_session = session
        self._heartbeat_runtime = runtime
        self._heartbeat_scheduler = runtime.service(Scheduler)
        # Everything that must know of the session learns of it before the first
        # await: the peer may go away at any of them, and the end must find it all.
        runtime.closers[session.id] = self._heartbeat_drain
        runtime.metrics.opened.inc()
        runtime.metrics.sessions.inc()
        runtime.service(Recorder).opened(session)
        self._heartbeat_scheduler.add(session, conf.get("HEARTBEAT_PHASE_SPREAD"))
        prepare_drain(runtime)  # the SIGTERM handler and the close timer, once
        logger.debug("heartbeat session %s opened (tab %s)", session.id, tab)
        await self._heartbeat_send(protocol.hello(
            session.id,
            tab,
            None if interval is None else int(interval * 1000),
            None if timeout is None else int(timeout * 1000),
            runtime.clock.wall_ms(),
        ))
        if session.closed:
            return
        await self._heartbeat_signal(session_opened, session=session)
        if not session.closed:
            await self._presence_open(session, self._heartbeat_send)

    async def _heartbeat_end(self, code: int | None, reason: CloseReason | None = None) -> None:
        session = self.heartbeat_session
        if session is None or session.closed:
            return
        session.closed = True
        self._heartbeat_scheduler.remove(session)
        if session.close_code is None:
            session.close_code = code
            if reason is None:
                reason = (CloseReason.TRANSPORT_LOST if code == CloseCode.ABNORMAL
                          else CloseReason.CLOSED)
            session.close_reason = reason
        logger.debug("heartbeat session %s ended: %s (%s)", session.id, session.close_reason,
                     session.close_code)
        self._heartbeat_runtime.closers.pop(session.id, None)
        metrics = self._heartbeat_runtime.metrics
        metrics.sessions.dec()
        metrics.closed.inc(reason=str(session.close_reason))
        self._heartbeat_runtime.service(Recorder).closed(session)
        try:
            await self._presence_close(session)
        except Exception:
            logger.exception("presence teardown of session %s failed", session.id)
        await self._heartbeat_signal(
            session_closed, session=session, code=session.close_code,
            reason=session.close_reason,
        )

    # Heartbeat frames --------------------------------------------------------

    async def _heartbeat_handle_text(self, session: SessionState, text: str) -> bool:
        """Handle a frame that may be a heartbeat; True if it was ours."""
        try:
            beat = protocol.parse_heartbeat_text(text)
        except ProtocolError as error:
            if await self._heartbeat_allow(session):
                await self._heartbeat_error(error)
            return True
        if beat is None:
            return False
        if not await self._heartbeat_allow(session):
            return True
        if session.client_report(beat.visible, beat.rtt_ms):
            self._presence_visibility(session)
        runtime = self._heartbeat_runtime
        if beat.type == protocol.PING:
            runtime.metrics.pings.inc()
            await self._heartbeat_send(protocol.pong(beat.id, runtime.clock.wall_ms()))
        elif beat.id == session.probe_id and session.probe_sent_raw is not None:
            session.record_rtt(runtime.clock.monotonic() - session.probe_sent_raw)
            runtime.metrics.rtt.observe(session.rtt)
            session.probe_sent_raw = None
        return True

    async def _heartbeat_allow(self, session: SessionState) -> bool:
        if session.bucket.take(self._heartbeat_runtime.clock.monotonic()):
            return True
        await self._heartbeat_too_many(session)
        return False

    async def _heartbeat_too_many(self, session: SessionState) -> None:
        if session.close_code is None:
            await self._heartbeat_close_with_hint(
                CloseCode.TOO_MANY_MESSAGES, "too many messages",
                conf.get("HEARTBEAT_RETRY_AFTER_MS"))
            unread = stop_reading(getattr(self, "_heartbeat_task", None))  # nor parsed
            logger.info("heartbeat session %s sent too many frames: closed 4429%s", session.id,
                        ", the rest of its frames left unread" if unread else "")

    async def _heartbeat_close_with_hint(self, code: CloseCode, text: str, retry: int) -> None:
        # The hint goes in a frame of its own first: Daphne drops close reasons.
        await self._heartbeat_send(protocol.close_notice(code, text, retry))
        await self.close(code=int(code), reason=protocol.close_reason(text, retry))

    async def _heartbeat_drain(self, retry_after_ms: int) -> None:
        """Close this session for a drain (4001), telling the client when to come back."""
        session = self.heartbeat_session
        if session is None or session.closed:
            return
        if session.close_code is None:
            session.close_code = int(CloseCode.DRAINING)
            session.close_reason = CloseReason.SERVER_SHUTDOWN
        session.retry_after_ms = retry_after_ms  # its presence is kept for this plus the grace
        try:
            await self._heartbeat_close_with_hint(
                CloseCode.DRAINING, "server restarting", retry_after_ms)
        finally:
            # Ended now: the transport's confirmation may come after the process is gone.
            await self._heartbeat_end(CloseCode.DRAINING, CloseReason.SERVER_SHUTDOWN)

    async def _heartbeat_error(self, error: ProtocolError) -> None:
        logger.debug("bad frame on %s: %s", self.scope.get("path"), error.detail)
        await self._heartbeat_send(error.as_message())

    async def _heartbeat_send(self, message: dict[str, Any]) -> None:
        try:  # past the wrappers that pass a websocket.send unchanged (sendpath.py)
            await frames_out(self)({"type": "websocket.send", "text": protocol.dumps(message)})
        except Exception as exc:
            # The peer went away (Daphne raises Disconnected): its disconnect ends it.
            logger.debug("heartbeat send on a closing connection failed: %r", exc)

    async def _heartbeat_send_probe(self, probe_id: str) -> None:
        self.heartbeat_session.last_probe_wall = self._heartbeat_runtime.clock.wall()
        await self._heartbeat_send(protocol.probe(probe_id))

    async def _heartbeat_zombie(self, silence: float) -> None:
        session = self.heartbeat_session
        if session is None or session.closed:
            return
        logger.info("heartbeat session %s silent for %.3f s, its probe unanswered for %.3f s: "
                    "closing as a zombie (4408)", session.id, silence,
                    self._heartbeat_scheduler.now() - (session.probe_sent_at or session.last_heard))
        if session.close_code is not None:
            # Already closed by the server, and the transport never confirmed it:
            # keep the recorded cause, just finish the teardown.
            await self._heartbeat_end(session.close_code, session.close_reason)
            return
        session.close_code = int(CloseCode.HEARTBEAT_TIMEOUT)
        session.close_reason = CloseReason.TIMEOUT
        session.zombie_wall = self._heartbeat_runtime.clock.wall()
        try:
            # The close frame first: when many zombies go at once (a lift full of
            # phones), every close leaves before any signal receiver or teardown runs.
            await super().close(code=int(CloseCode.HEARTBEAT_TIMEOUT), reason="heartbeat timeout")
            await self._heartbeat_signal(zombie_detected, session=session, silence=silence)
        finally:
            # Torn down now, not when the transport finally notices.
            await self._heartbeat_end(CloseCode.HEARTBEAT_TIMEOUT, CloseReason.TIMEOUT)

    async def _heartbeat_signal(self, signal, **kwargs) -> None:
        for receiver, result in await signal.asend_robust(
                sender=type(self), consumer=self, **kwargs):
            if isinstance(result, Exception):
                logger.error("receiver %r of a heartbeat signal raised", receiver,
                             exc_info=result)

    # Channel-layer events (the admin's actions, across processes) -----------

    async def heartbeat_disconnect(self, event: dict[str, Any]) -> None:
        """Close this connection on request (``heartbeat.disconnect``), 4000 by default."""
        code = int(event.get("code") or CloseCode.SERVER_CLOSE)
        session = self.heartbeat_session
        if session is not None and session.close_code is None:
            session.close_code = code
            session.close_reason = CloseReason.ADMIN
        text = event.get("reason")
        await super().close(code=code, reason=str(text) if text else "closed by the server")

    async def heartbeat_probe(self, event: dict[str, Any]) -> None:
        """Send a server ping now (``heartbeat.probe``); the answer records the RTT."""
        session = self.heartbeat_session
        if session is None or session.closed:
            return
        await self._heartbeat_send_probe(
            session.next_probe(self._heartbeat_runtime.clock.monotonic()))
        logger.info("heartbeat session %s probed on request", session.id)
