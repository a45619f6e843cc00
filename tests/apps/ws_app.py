"""WebSocket sample app (the websockets library): echoes every message."""
import asyncio
import sys

from websockets.asyncio.server import serve


# An optional name prefixes every text echo, to tell two instances apart.
PREFIX = sys.argv[2] + ":" if len(sys.argv) > 2 else ""


async def echo(ws):
    async for message in ws:
        await ws.send(PREFIX + message if isinstance(message, str) else message)


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    async with serve(echo, host.strip("[]"), int(port), max_size=None) as server:
        # Tests bind port 0 and read the real port from here.
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
