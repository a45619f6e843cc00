"""WebSocket client (the websockets library): sends text and binary
messages, prints the echoes as JSON. An optional second argument is the
prefix the server is expected to put before text echoes."""
import json
import sys

from websockets.sync.client import connect


def main():
    prefix = sys.argv[2] + ":" if len(sys.argv) > 2 else ""
    out = []
    with connect(sys.argv[1], max_size=None, open_timeout=10, proxy=None) as ws:
        for message in ["hello", b"\x00\x01binary", "x" * 200000]:
            ws.send(message)
            echo = ws.recv(timeout=10)
            expected = prefix + message if isinstance(message, str) else message
            out.append([type(echo).__name__, len(echo), echo == expected])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
