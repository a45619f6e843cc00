"""gRPC sample app: unary, server-streaming and bidi echo, with trailing
metadata and non-OK statuses on request. Raw-bytes methods (no generated
code), so no protoc is needed."""
import sys
from concurrent import futures

import grpc

# An optional name prefixes every answer, to tell two instances apart.
PREFIX = (sys.argv[2] + "|").encode() if len(sys.argv) > 2 else b""


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "unary-" + request.decode()),))
    if request == b"fail":
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    return PREFIX + b"echo:" + request


def server_stream(request, context):
    n = int(request)
    for i in range(n):
        yield PREFIX + f"item-{i}".encode()
    context.set_trailing_metadata((("x-count", str(n)),))


def bidi(requests, context):
    count = 0
    for message in requests:
        count += 1
        yield PREFIX + b"bidi:" + message
    context.set_trailing_metadata((("x-received", str(count)),))


def main():
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(sys.argv[1])
    server.start()
    # Tests bind port 0 and read the real port from here.
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
