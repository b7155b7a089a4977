"""A mutual-TLS front for TFF's worker: a gRPC server that forwards every call, as bytes, to a local worker.

TFF 0.87's ``worker_binary`` speaks only plaintext gRPC and takes no TLS flags, and no TLS terminator
(stunnel, nginx, envoy, haproxy) is installed here, so ``python -m fedlab worker --tls-*`` starts the worker
on a loopback port and this proxy on the public address. The proxy checks the client's certificate against
the CA (``require_client_auth``), then forwards each call unchanged (no protobuf decoding: the request and
response bytes pass through), with its deadline, its metadata and cancellation, and returns the worker's
status code and details. TFF's ``ExecutorGroup`` service has only unary calls; any other method is forwarded
as a bidirectional stream, which carries any kind of call.
"""

from __future__ import annotations

import concurrent.futures
from typing import Optional

EXECUTOR_SERVICE = "/tensorflow_federated.v0.ExecutorGroup/"
# Every call holds one thread while the worker computes; TFF's driver keeps many calls open at once (values,
# calls and Compute of one sub-round), and a call queued behind a full pool could wait for one that needs it.
MAX_THREADS = 256
_GRPC_OPTIONS = [  # as TFF's own local runtime sets them (and fedlab.workers.distributed)
    ("grpc.max_message_length", 2 * 1000 * 1000 * 1000),
    ("grpc.max_receive_message_length", 2 * 1000 * 1000 * 1000),
    ("grpc.max_send_message_length", 2 * 1000 * 1000 * 1000),
]
# Set by gRPC itself on each hop; forwarding them would duplicate or contradict the new call's own.
_HOP_METADATA = ("user-agent", "te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding")


def _timeout(context) -> Optional[float]:
    """The caller's deadline as a timeout (s) for the forwarded call; None for none.

    gRPC reports "no deadline" as ~9.2e18 s, which the forwarded call would take as a deadline in the past.
    """
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else remaining


def _forwarded_metadata(context) -> tuple:
    return tuple((k, v) for k, v in (context.invocation_metadata() or ())
                 if not k.startswith(":") and k.lower() not in _HOP_METADATA)


class _Forwarder:
    """A ``grpc.GenericRpcHandler`` forwarding every method to ``channel``."""

    def __init__(self, channel):
        self.channel = channel
        self._unary: dict = {}
        self._stream: dict = {}

    def service(self, handler_call_details):
        import grpc

        method = handler_call_details.method
        if method.startswith(EXECUTOR_SERVICE):
            return grpc.unary_unary_rpc_method_handler(self._unary_call(method))
        return grpc.stream_stream_rpc_method_handler(self._stream_call(method))

    def _unary_call(self, method: str):
        import grpc

        if method not in self._unary:
            upstream = self.channel.unary_unary(method)  # no (de)serializers: bytes in, bytes out

            def call(request: bytes, context) -> Optional[bytes]:
                future = upstream.future(request, timeout=_timeout(context),
                                         metadata=_forwarded_metadata(context))
                context.add_callback(future.cancel)  # the driver gave up: so does the worker
                try:
                    response = future.result()
                except grpc.FutureCancelledError:
                    context.abort(grpc.StatusCode.CANCELLED, "cancelled by the client")
                except grpc.RpcError as err:
                    _abort_like(context, err)
                context.set_trailing_metadata(future.trailing_metadata() or ())
                return response
            self._unary[method] = call
        return self._unary[method]

    def _stream_call(self, method: str):
        if method not in self._stream:
            upstream = self.channel.stream_stream(method)

            def call(requests, context):
                import grpc

                responses = upstream(requests, timeout=_timeout(context),
                                     metadata=_forwarded_metadata(context))
                context.add_callback(responses.cancel)
                try:
                    yield from responses
                except grpc.RpcError as err:
                    _abort_like(context, err)
            self._stream[method] = call
        return self._stream[method]


def _abort_like(context, err) -> None:
    """Ends the call with the worker's status: the driver sees what it would see without the proxy."""
    import grpc

    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"TLS proxy: the TFF worker behind it is unavailable: {details}"
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    if trailing:
        context.set_trailing_metadata(tuple(m for m in trailing if not m[0].startswith("grpc-")))
    context.abort(code, details or "")


def start(listen: str, upstream: str, *, cert: bytes, key: bytes, ca: bytes, threads: int = MAX_THREADS):
    """Starts the proxy on ``listen`` (``host:port``, ``[::]:port`` for every interface) to ``upstream``.

    ``cert``/``key``: the worker's certificate chain and key (PEM); ``ca``: the CA that must have signed
    every client's certificate. Returns the started ``grpc.Server``; ``server.stop(grace)`` stops it.
    Raises RuntimeError if the address cannot be bound.
    """
    import grpc

    channel = grpc.insecure_channel(upstream, _GRPC_OPTIONS)
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tls-proxy"),
                         handlers=[_Forwarder(channel)], options=_GRPC_OPTIONS)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as err:  # gRPC >= 1.50 raises instead of returning 0
        raise RuntimeError(f"cannot listen on {listen}: {err}") from None
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    server.start()
    return server
