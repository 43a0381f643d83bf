"""The ceiling: a pure ``websockets`` asyncio server answering pings, no Django, no Channels."""

import asyncio
import json
import sys
import time

from websockets.asyncio.server import serve


async def handler(ws):
    async for text in ws:
        try:
            message = json.loads(text)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "ping":
            await ws.send(json.dumps({"type": "pong", "id": message.get("id"),
                                      "server_time": int(time.time() * 1000)}))


async def main(host, port):
    async with serve(handler, host, port, backlog=2048, compression=None, max_queue=None):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
