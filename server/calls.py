"""What every call goes through, wrapped around each method's handler once, when
the server is built (there is no interceptor chain to walk per call):

- a request id: the caller's ``x-request-id`` when it is sane, else a new one;
  returned in trailing metadata and put on every log line of the call;
- bearer-token authentication when tokens are configured (health stays open);
  an unauthenticated call is refused before its request is looked at;
- request bytes that do not decode as the method's message: INVALID_ARGUMENT;
- exceptions become statuses (server.status): the one place;
- one log line per call (DEBUG when OK, WARNING for the caller's errors, ERROR
  for the server's) and, when enabled, the metrics.

Services are registered through :meth:`CallPath.register`, which hands the
generated ``add_*_to_server`` function a stand-in for the server that wraps every
handler on its way in.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from server.errors import InvalidArgument
from server.logs import request_id_var
from server.metrics import Metrics
from server.security import BearerTokens
from server.status import to_status

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Behaviour = Callable[[Any, Context], Any]

REQUEST_ID_KEY = "x-request-id"
SERVICE_PREFIX = "/eventstreaming.v1.EventStreaming/"
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
#: Codes that mean the server failed (ERROR); every other non-OK code is the
#: caller's business or a transient condition (WARNING).
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
#: How a streaming call normally ends when the client stops listening.
_CLIENT_ENDED = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
_OK = grpc.StatusCode.OK
_SUBSCRIPTIONS = frozenset({"SubscribeToStream", "SubscribeToAll"})

call_log = logging.getLogger("server.calls")


def method_label(method: str) -> str:
    """``AppendToStream`` for this service's methods, ``Health/Check`` for others."""
    if method.startswith(SERVICE_PREFIX):
        return method[len(SERVICE_PREFIX) :]
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rpartition('.')[2]}/{name}"


def _status_code(context: Context, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_VALUE.get(code, default)
    return default


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key != REQUEST_ID_KEY or not isinstance(value, str):
            continue
        if _REQUEST_ID_PATTERN.fullmatch(value):
            return value
    return os.urandom(16).hex()


class Undecodable:
    """Stands in for a request whose bytes do not decode as its message: the call
    answers INVALID_ARGUMENT (after authentication, like any other request)."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            "request", f"the bytes sent do not decode as a {self.message_name} message"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, answering an Undecodable instead of raising (a raise
    there ends the call as UNKNOWN, naming a Python class)."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Undecodable(name)

    return deserialize


async def _responses(behaviour: Behaviour, request: Any, context: Context) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour, whether it is an async generator
    or a coroutine that writes with ``context.write`` (as the health Watch and
    AppendSession do)."""
    result = behaviour(request, context)
    if inspect.isawaitable(result):
        await result
        return
    async for item in result:
        yield item


def _begin(context: Context, metadata: Any) -> str:
    """The call's request id, on its log lines and in its trailing metadata."""
    request_id = _request_id(metadata)
    request_id_var.set(request_id)
    context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
    return request_id


async def _admit(
    context: Context, metadata: Any, tokens: BearerTokens | None, request: Any
) -> None:
    """Refuse a call without a valid token (UNAUTHENTICATED), then one whose
    request bytes did not decode (INVALID_ARGUMENT)."""
    if tokens is not None:
        problem = tokens.check(metadata)
        if problem is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
    if isinstance(request, Undecodable):
        raise request.error()


async def _abort(context: Context, status: grpc.Status) -> None:
    # Keep what is already set for the trailers (the request id).
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(
        status.code, status.details, trailing_metadata=kept + tuple(status.trailing_metadata)
    )


_KINDS: tuple[tuple[str, Any, bool], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


class CallPath:
    """Wraps handlers in the common path, for these metrics (None: off) and
    tokens (None: authentication off)."""

    def __init__(self, metrics: Metrics | None = None, tokens: BearerTokens | None = None) -> None:
        self.metrics = metrics
        self.tokens = tokens

    def register(
        self, add_to_server: Callable[[Any, Any], None], servicer: Any, server: Any
    ) -> None:
        """``add_to_server(servicer, server)`` (a generated ``add_*_to_server``, or
        anything that registers handlers the same way), every handler wrapped."""
        add_to_server(servicer, _Registrar(server, self))

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler`` of ``method`` (``/package.Service/Method``) on the common path."""
        label = method_label(method)
        tokens = None if self.tokens is None or self.tokens.is_open(method) else self.tokens
        for attribute, factory, streaming in _KINDS:
            behaviour = getattr(handler, attribute)
            if behaviour is None:
                continue
            wrap = self._stream if streaming else self._unary
            wrapped: Handler = factory(
                wrap(behaviour, label, tokens),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
            return wrapped
        return handler

    def _unary(self, behaviour: Behaviour, label: str, tokens: BearerTokens | None) -> Behaviour:
        metrics = self.metrics

        async def unary(request: Any, context: Context) -> Any:
            metadata = context.invocation_metadata()
            request_id = _begin(context, metadata)
            started = time.perf_counter()
            code = _OK
            try:
                await _admit(context, metadata, tokens, request)
                response = await behaviour(request, context)
            except grpc.aio.AbortError:
                code = _status_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                status = to_status(exc, label)
                code = status.code
                await _abort(context, status)
                raise  # pragma: no cover - abort raises
            finally:
                self._finish(label, request, code, started, request_id, streaming=False)
            if metrics is not None:
                metrics.observe_success(label, request, response)
            return response

        return unary

    def _stream(self, behaviour: Behaviour, label: str, tokens: BearerTokens | None) -> Behaviour:
        metrics = self.metrics
        subscription = label in _SUBSCRIPTIONS and metrics is not None

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            metadata = context.invocation_metadata()
            request_id = _begin(context, metadata)
            started = time.perf_counter()
            code = _OK
            if subscription:
                assert metrics is not None
                metrics.subscriptions_open.inc()
            try:
                await _admit(context, metadata, tokens, request)
                async for item in _responses(behaviour, request, context):
                    yield item
            except grpc.aio.AbortError:
                code = _status_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                status = to_status(exc, label)
                code = status.code
                await _abort(context, status)
                raise  # pragma: no cover - abort raises
            finally:
                if subscription:
                    assert metrics is not None
                    metrics.subscriptions_open.dec()
                self._finish(label, request, code, started, request_id, streaming=True)

        return stream

    def _finish(
        self,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        started: float,
        request_id: str,
        *,
        streaming: bool,
    ) -> None:
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_call(method, code.name, seconds)
        if code is _OK or (streaming and code in _CLIENT_ENDED):
            level = logging.DEBUG
        elif code in _SERVER_FAULTS:
            level = logging.ERROR
        else:
            level = logging.WARNING
        if not call_log.isEnabledFor(level):
            return
        status = code.name
        stream_name = getattr(request, "stream_name", "")
        call_log.log(
            level,
            "%s %s in %.1f ms",
            method,
            status,
            seconds * 1000,
            extra={
                "method": method,
                "stream": stream_name if isinstance(stream_name, str) else "",
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": request_id,
            },
        )


class _Registrar:
    """Stands in for the server in an ``add_*_to_server`` function: hands every
    method handler on to the server wrapped in the common path."""

    def __init__(self, server: Any, path: CallPath) -> None:
        self._server = server
        self._path = path

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self._server.add_registered_method_handlers(
            service,
            {name: self._path.wrap(f"/{service}/{name}", h) for name, h in handlers.items()},
        )

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Wrapped(h, self._path) for h in handlers))


class _Wrapped(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose handlers are wrapped (once per method). Registered
    handlers take precedence, so this answers only methods registered no other
    way."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], path: CallPath) -> None:
        self._inner = inner
        self._path = path
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._path.wrap(method, handler))
        return known[1]
