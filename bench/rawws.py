"""A small asyncio WebSocket client for load generation, cheap enough not to skew results.

The ``websockets`` client costs about as much CPU per message as the server under test,
which on a 2-core machine corrupts the measurement. This one writes a fixed handshake,
sends frames with an all-zero mask (legal, and the payload goes out unchanged), parses
only what the benchmarks need, and answers protocol pings.
"""

from __future__ import annotations

import asyncio
import json
import time

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def frame(payload: bytes | str, opcode: int = 1) -> bytes:
    """A masked client frame (mask key 0, so the payload is sent as is)."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


PING = frame(b'{"type":"ping","id":1}')


class Client(asyncio.Protocol):
    """One connection. Override or pass ``on_text(client, payload)``."""

    def __init__(self, host: str, port: int, path: str, on_text=None, on_close=None):
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n\r\n"
        ).encode()
        self.on_text = on_text
        self.on_close = on_close
        self.buf = bytearray()
        self.opened = asyncio.get_running_loop().create_future()
        self.transport = None
        self.is_open = False
        self.was_open = False  # the handshake succeeded at some point
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.status = b""
        self.muted = False  # when set, no frame at all is sent (protocol pongs included)
        self.last_sent = 0.0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def send(self, data: bytes) -> None:
        if not self.muted and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_sent = time.time()

    def send_text(self, text: str) -> None:
        self.send(frame(text))

    def data_received(self, data):
        buf = self.buf
        buf += data
        if not self.is_open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = bytes(buf[:buf.find(b"\r\n")])
            del buf[:end + 4]
            if b" 101 " not in self.status:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(self.status.decode("latin-1")))
                self.transport.close()
                return
            self.is_open = self.was_open = True
            if not self.opened.done():
                self.opened.set_result(True)
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos:pos + n])
            del buf[:pos + n]
            if opcode in (1, 0):
                if self.on_text is not None:
                    self.on_text(self, payload)
            elif opcode == 9:
                self.send(frame(payload, 10))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if n >= 2 else 1005
                self.closed_at = time.time()
                if self.on_close is not None:
                    self.on_close(self)
                if not self.muted:
                    self.send(frame(payload[:2], 8))
                self.transport.close()

    def connection_lost(self, exc):
        self.is_open = False
        if self.closed_at is None:
            self.closed_at = time.time()
            if self.on_close is not None:
                self.on_close(self)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost before the handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(True)


async def connect(host, port, path, *, source=None, on_text=None, on_close=None,
                  factory=Client, timeout=30.0):
    """Open one connection and wait for the 101."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: factory(host, port, path, on_text=on_text, on_close=on_close),
        host, port, local_addr=(source, 0) if source else None)
    await asyncio.wait_for(client.opened, timeout)
    return client


def answer_probes(client: Client, payload: bytes) -> None:
    """on_text that answers the mixin's server probes (``{"type":"ping","id":"s1"}``)."""
    if b'"ping"' in payload:
        message = json.loads(payload)
        if message.get("type") == "ping":
            client.send_text(json.dumps({"type": "pong", "id": message.get("id")}))
