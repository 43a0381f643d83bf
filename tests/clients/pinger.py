"""A healthy session in its own process, measuring its ping round trips.

Usage: python -m tests.clients.pinger URL ORIGIN PING_EVERY_SECONDS [LIFETIME_SECONDS]

Sends a ping, waits for its pong, sleeps PING_EVERY_SECONDS, and so on. Prints one
JSON line per pong, ``{"t": <monotonic>, "rtt_ms": ...}``, answers probes, and prints
``{"t": ..., "closed": <code>}`` if the connection ends before the lifetime. Kept out
of the test process so the test's own work (building megabyte frames, say) never
shows up in the figures. LIFETIME_SECONDS (default 120) is scaled like every wait of
the tests (HEARTBEAT_TEST_TIME_FACTOR).
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import scaled


def report(**fields) -> None:
    print(json.dumps({"t": time.monotonic(), **fields}), flush=True)


async def main(url: str, origin: str, every: float, lifetime: float) -> None:
    async with connect(url, origin=origin, ping_interval=None, open_timeout=scaled(20)) as ws:
        json.loads(await ws.recv())  # hello
        report(ready=True)
        try:
            async with asyncio.timeout(lifetime):
                n = 0
                while True:
                    n += 1
                    started = time.perf_counter()
                    await ws.send(json.dumps({"type": "ping", "id": n}))
                    while True:
                        message = json.loads(await ws.recv())
                        if message.get("type") == "pong" and message.get("id") == n:
                            break
                        if message.get("type") == "ping":
                            await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
                    report(rtt_ms=(time.perf_counter() - started) * 1000)
                    await asyncio.sleep(every)
        except TimeoutError:
            return
        except ConnectionClosed:
            pass
        report(closed=ws.close_code)


if __name__ == "__main__":
    lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), scaled(lifetime)))
