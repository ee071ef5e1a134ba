"""Server interceptors, outermost first:

- :class:`CallObserverInterceptor`: a request id per call (from ``x-request-id``
  or generated, returned in trailing metadata), one log line per call, metrics;
- :class:`BearerTokenInterceptor`: ``authorization: Bearer <token>`` when tokens
  are configured (health stays open);
- :class:`ErrorMappingInterceptor`: the one place where exceptions become gRPC
  statuses.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from server.errors import InvalidArgument
from server.logs import request_id_var
from server.metrics import Metrics
from server.security import BearerTokens
from server.settings import Settings
from server.status import to_status

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
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

call_log = logging.getLogger("server.calls")


def _rewrap(
    handler: Handler,
    unary: Callable[[Behaviour], Behaviour],
    stream: Callable[[Behaviour], Behaviour],
    deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """The same handler with its behaviour wrapped: ``unary`` for calls with one
    response, ``stream`` for calls with a response stream; and its request
    deserializer replaced, when one is given."""
    kinds: tuple[tuple[str, Any, Callable[[Behaviour], Behaviour]], ...] = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, unary),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, unary),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, stream),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, stream),
    )
    for attribute, factory, wrap in kinds:
        behaviour = getattr(handler, attribute)
        if behaviour is not None:
            wrapped: Handler = factory(
                wrap(behaviour),
                request_deserializer=deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return wrapped
    return handler


async def _responses(behaviour: Behaviour, request: Any, context: Context) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour, whether it is an async generator
    or a coroutine that writes with ``context.write`` (as the health Watch does)."""
    result = behaviour(request, context)
    if inspect.isawaitable(result):
        await result
        return
    async for item in result:
        yield item


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
    return uuid.uuid4().hex


class CallObserverInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Gives every call a request id (the caller's ``x-request-id`` when it sends
    a sane one), returns it in trailing metadata, logs one line per call (DEBUG
    when OK, WARNING or ERROR otherwise) and feeds the metrics."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = method_label(handler_call_details.method)
        request_id = _request_id(handler_call_details.invocation_metadata)
        return _rewrap(
            handler,
            lambda behaviour: self._unary(behaviour, method, request_id),
            lambda behaviour: self._stream(behaviour, method, request_id),
        )

    def _begin(self, context: Context, request_id: str) -> float:
        request_id_var.set(request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        return time.perf_counter()

    def _unary(self, behaviour: Behaviour, method: str, request_id: str) -> Behaviour:
        async def unary(request: Any, context: Context) -> Any:
            started = self._begin(context, request_id)
            code = grpc.StatusCode.OK
            try:
                response = await behaviour(request, context)
            except grpc.aio.AbortError:
                code = _status_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._finish(method, request, code, started, request_id, streaming=False)
            if self.metrics is not None:
                self.metrics.observe_success(method, request, response)
            return response

        return unary

    def _stream(self, behaviour: Behaviour, method: str, request_id: str) -> Behaviour:
        subscription = method == "SubscribeToStream" and self.metrics is not None

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started = self._begin(context, request_id)
            code = grpc.StatusCode.OK
            if subscription:
                assert self.metrics is not None
                self.metrics.subscriptions_open.inc()
            try:
                async for item in _responses(behaviour, request, context):
                    yield item
            except grpc.aio.AbortError:
                code = _status_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                if subscription:
                    assert self.metrics is not None
                    self.metrics.subscriptions_open.dec()
                self._finish(method, request, code, started, request_id, streaming=True)

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
        status = code.name
        if self.metrics is not None:
            self.metrics.observe_call(method, status, seconds)
        if code is grpc.StatusCode.OK or (streaming and code in _CLIENT_ENDED):
            level = logging.DEBUG
        elif code in _SERVER_FAULTS:
            level = logging.ERROR
        else:
            level = logging.WARNING
        if not call_log.isEnabledFor(level):
            return
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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without a valid ``authorization: Bearer <token>`` with
    UNAUTHENTICATED; the health service stays open."""

    def __init__(self, tokens: BearerTokens) -> None:
        self.tokens = tokens

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or self.tokens.is_open(handler_call_details.method):
            return handler
        problem = self.tokens.check(handler_call_details.invocation_metadata)
        if problem is None:
            return handler

        def refuse_unary(_: Behaviour) -> Behaviour:
            async def unary(request: Any, context: Context) -> Any:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

            return unary

        def refuse_stream(_: Behaviour) -> Behaviour:
            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
                yield  # pragma: no cover - makes this an async generator

            return stream

        return _rewrap(handler, refuse_unary, refuse_stream)


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


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns storage errors and InvalidArgument into their status codes, anything
    else into INTERNAL with a generic message (details only in the log), and
    request bytes that do not decode into INVALID_ARGUMENT."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let grpc answer UNIMPLEMENTED
            return handler
        method = handler_call_details.method
        return _rewrap(
            handler,
            lambda behaviour: _wrap_unary(behaviour, method),
            lambda behaviour: _wrap_stream(behaviour, method),
            _tolerant(handler.request_deserializer),
        )


async def _abort(context: Context, exc: Exception, method: str) -> None:
    status = to_status(exc, method)
    # Keep what is already set for the trailers (the request id).
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(
        status.code, status.details, trailing_metadata=kept + tuple(status.trailing_metadata)
    )


def _wrap_unary(behaviour: Behaviour, method: str) -> Behaviour:
    async def unary(request: Any, context: Context) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return unary


def _wrap_stream(behaviour: Behaviour, method: str) -> Behaviour:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            async for item in _responses(behaviour, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return stream


def build_interceptors(
    settings: Settings, metrics: Metrics | None = None
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The interceptor chain for these settings, outermost first."""
    chain: list[grpc.aio.ServerInterceptor] = [CallObserverInterceptor(metrics)]  # type: ignore[type-arg]
    tokens = settings.auth_token_list
    if tokens:
        chain.append(BearerTokenInterceptor(BearerTokens(tokens)))
    chain.append(ErrorMappingInterceptor())
    return chain
