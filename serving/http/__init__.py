"""The REST port (`netc serve --http-port`, 8000 by default): KServe v2 REST with
Triton's binary tensor data, repository and classification extensions, netc's vision
service over HTTP, and a page to try a model in the browser.

It runs on the gRPC server's event loop and calls the gRPC services' own code after
decoding (serving/http/wire.py turns a REST body into a ModelInferRequest), so checks,
limits, batching, stats, metrics and tokens are the same on both ports.

    app = build_app(repository, max_body=128 << 20, auth=interceptor)
    server = await start_http(app, "0.0.0.0", 8000, ssl_context)
"""

from netc.serving.http.app import HttpServer, build_app, start_http

__all__ = ["HttpServer", "build_app", "start_http"]
