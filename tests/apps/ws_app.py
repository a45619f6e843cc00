"""WebSocket sample app (the websockets library): echoes every message."""
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    async with serve(echo, host.strip("[]"), int(port), max_size=None):
        print("ws app ready", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
