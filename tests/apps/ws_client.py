"""WebSocket client (the websockets library): sends text and binary
messages, prints the echoes as JSON."""
import json
import sys

from websockets.sync.client import connect


def main():
    out = []
    with connect(sys.argv[1], max_size=None, open_timeout=10, proxy=None) as ws:
        for message in ["hello", b"\x00\x01binary", "x" * 200000]:
            ws.send(message)
            echo = ws.recv(timeout=10)
            out.append([type(echo).__name__, len(echo), echo == message])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
