"""A real gRPC server and client (grpcio) for zkgate's tests, with no generated code: methods
are registered by name and messages are raw bytes.

    echo.py server PORT [CERT KEY]   serve /test.Echo/{Unary,ServerStream,Bidi,Fail,Slow}
                                     (h2c, or TLS with CERT and KEY)
    echo.py client PORT [CA NAME]    call each through PORT (TLS trusting CA, for NAME),
                                     print one JSON line of outcomes
"""
import json
import sys
import time
from concurrent import futures

import grpc


def unary(request, context):
    return request


def server_stream(request, context):
    for i in range(int(request)):
        yield b"msg%d" % i


def bidi(requests, context):
    for message in requests:
        yield message.upper()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "nope")


def slow(request, context):
    time.sleep(3)
    return request


def serve(port, cert=None, key=None):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port("127.0.0.1:%d" % port, creds)
    else:
        server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def outcome(call):
    try:
        return {"ok": call()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def client(port, ca=None, name=None):
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = (("grpc.ssl_target_name_override", name),)
        channel = grpc.secure_channel("127.0.0.1:%d" % port, creds, options)
    else:
        channel = grpc.insecure_channel("127.0.0.1:%d" % port)
    unary_call = channel.unary_unary("/test.Echo/Unary")
    stream_call = channel.unary_stream("/test.Echo/ServerStream")
    bidi_call = channel.stream_stream("/test.Echo/Bidi")
    fail_call = channel.unary_unary("/test.Echo/Fail")
    down_call = channel.unary_unary("/down.Svc/Unary")
    results = {
        "unary": outcome(lambda: unary_call(b"hello", timeout=10).decode()),
        "server_stream": outcome(lambda: [m.decode() for m in stream_call(b"3", timeout=10)]),
        "bidi": outcome(lambda: [m.decode() for m in bidi_call(iter([b"a", b"b", b"c"]), timeout=10)]),
        "error": outcome(lambda: fail_call(b"x", timeout=10)),
        "no_instance": outcome(lambda: down_call(b"x", timeout=10)),
    }
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    mode, port, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    serve(port, *extra) if mode == "server" else client(port, *extra)
