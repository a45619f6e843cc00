"""gRPC client (grpcio): calls every method of the sample app and prints
what it got back, statuses and trailing metadata included, as JSON."""
import json
import sys

import grpc


def trailers(call):
    return sorted((k, v) for k, v in (call.trailing_metadata() or ()) if k.startswith("x-"))


def main():
    # Optional: metadata "key=value" sent with every call.
    metadata = [tuple(sys.argv[2].split("=", 1))] if len(sys.argv) > 2 else []
    channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=10)
    out = {}

    unary = channel.unary_unary("/test.Echo/Unary")
    response, call = unary.with_call(b"hello", timeout=10, metadata=metadata)
    out["unary"] = {"response": response.decode(), "code": call.code().name, "trailers": trailers(call)}
    try:
        unary(b"fail", timeout=10, metadata=metadata)
        out["unary_fail"] = "unexpected success"
    except grpc.RpcError as e:
        out["unary_fail"] = {"code": e.code().name, "details": e.details(), "trailers": trailers(e)}

    stream = channel.unary_stream("/test.Echo/ServerStream")(b"5", timeout=10, metadata=metadata)
    out["server_stream"] = {"items": [m.decode() for m in stream], "code": stream.code().name, "trailers": trailers(stream)}

    bidi = channel.stream_stream("/test.Echo/Bidi")(iter([b"a", b"b" * 70000, b"c"]), timeout=10, metadata=metadata)
    items = [m.decode()[:10] + f"...({len(m)})" for m in bidi]
    out["bidi"] = {"items": items, "code": bidi.code().name, "trailers": trailers(bidi)}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
