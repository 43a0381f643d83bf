"""A heartbeat client that reports every message it gets, for tests that run it elsewhere.

Usage: python -m tests.clients.watcher URL ORIGIN PING_EVERY_SECONDS [LIFETIME_SECONDS]

Runs where the test process cannot (another network namespace, say). Prints one JSON
line per message received, ``{"t": <monotonic>, "msg": {...}}``, answers probes, pings
every PING_EVERY_SECONDS (0: never), and prints ``{"t": ..., "closed": <code>}`` when
the connection ends. ``time.monotonic()`` is one clock for every process on the host,
so the test compares these times with its own. LIFETIME_SECONDS (default 60) is scaled
like every wait of the tests (HEARTBEAT_TEST_TIME_FACTOR).
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

        async def pinger():
            n = 0
            while True:
                await asyncio.sleep(every)
                n += 1
                await ws.send(json.dumps({"type": "ping", "id": n}))

        task = asyncio.create_task(pinger()) if every > 0 else None
        try:
            async with asyncio.timeout(lifetime):
                async for raw in ws:
                    message = json.loads(raw)
                    report(msg=message)
                    if message.get("type") == "ping":
                        await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            if task is not None:
                task.cancel()
        report(closed=ws.close_code)


if __name__ == "__main__":
    lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), scaled(lifetime)))
