"""A well-behaved heartbeat client in its own process, for freezing with SIGSTOP.

Usage: python -m tests.clients.well_behaved URL ORIGIN PING_EVERY_SECONDS
Prints the hello as one JSON line, answers probes, pings on its own, and prints
``closed <code>`` when the connection ends. Exits by itself after 60 s at most (scaled
like every wait of the tests, HEARTBEAT_TEST_TIME_FACTOR).
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import scaled

LIFETIME = scaled(60.0)


async def main(url: str, origin: str, every: float) -> None:
    async with connect(url, origin=origin, ping_interval=None) as ws:
        hello = json.loads(await ws.recv())
        print(json.dumps(hello), flush=True)

        async def pinger():
            n = 0
            while True:
                await asyncio.sleep(every)
                n += 1
                await ws.send(json.dumps({"type": "ping", "id": n}))

        task = asyncio.create_task(pinger())
        try:
            async with asyncio.timeout(LIFETIME):
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "ping":
                        await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
        except ConnectionClosed:
            pass
        except TimeoutError:
            pass
        finally:
            task.cancel()
        print(f"closed {ws.close_code}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
