"""The HTTP side: an OpenAI-compatible FastAPI app over one `Scheduler`.

Routes: `POST /v1/chat/completions` (JSON or, with ``stream: true``, server-sent events),
`GET /v1/models`, `GET /health`. Every refusal is an `APIError` answered in OpenAI's error shape;
nothing a client sends can stop the scheduler thread, and a client that goes away (a closed
stream, a dropped connection) has its request cancelled, which frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..batching import Token
from ..commands import one_line
from .chat import AnswerText, ChatLimits, PreparedChat, prepare_chat
from .errors import APIError
from .protocol import (
    ChatRequest,
    chunk_body,
    completion_body,
    completion_id,
    models_body,
    now,
    parse_chat_request,
    server_sent_event,
    usage_chunk_body,
)
from .scheduler import QueueFull, Scheduler, SchedulerStopped

logger = logging.getLogger("speech_llama.serving")

DISCONNECT_POLL_S = 1.0  # how often a waiting non-streaming request checks that its client is still there


@dataclass(frozen=True)
class ServeConfig:
    """The served model's name and the server's limits (the `speech-llama serve` options)."""

    model_name: str
    max_batch: int = 8  # sequences decoded at once
    max_queue: int = 64  # requests waiting beyond those; one more gets 429
    max_body_bytes: int = 10 * 2**20
    max_audio_seconds: float = 30.0
    timeout_s: float = 120.0  # from arrival to the answer's last token
    max_new_tokens: int = 256  # the default and the most a request may ask for

    def check(self, processor) -> None:
        """Refuse limits that could never work, in one line each."""
        for name in ("max_batch", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_option(name)} must be >= 1, got {getattr(self, name)}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes (--max-body-mb) must be at least one byte, got {self.max_body_bytes}")
        if self.max_queue < 0:
            raise ValueError(f"{_option('max_queue')} must be >= 0, got {self.max_queue}")
        if self.timeout_s <= 0:
            raise ValueError(f"{_option('timeout_s')} must be > 0, got {self.timeout_s:g}")
        if not 0 < self.max_audio_seconds <= processor.max_speech_seconds:
            raise ValueError(f"{_option('max_audio_seconds')} must be in (0, {processor.max_speech_seconds:g}] (the "
                             f"encoder's longest clip), got {self.max_audio_seconds:g}")


def _option(field: str) -> str:
    """A limit's name as the config and the command line spell it."""
    return f"{field} (--{field.replace('_', '-')})"


def create_app(model, processor, config: ServeConfig) -> FastAPI:
    """The app; its scheduler thread starts and stops with the app's lifespan (uvicorn's startup/shutdown)."""
    config.check(processor)
    scheduler = Scheduler(model, processor, config.max_batch, config.max_queue)
    limits = ChatLimits(max_audio_seconds=config.max_audio_seconds, max_new_tokens=config.max_new_tokens)
    context_length = model.config.text_config.max_position_embeddings
    started = now()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="speech-llama", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        load = scheduler.load()
        return {"status": "ok", "model": config.model_name, "running": load.running, "waiting": load.waiting,
                "requests": load.requests, "max_batch": config.max_batch, "max_queue": config.max_queue}

    @app.get("/v1/models")
    async def models() -> dict:
        return models_body(config.model_name, started)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrived = asyncio.get_running_loop().time()  # the timeout counts from here
        chat_request = parse_chat_request(await _read_body(request, config.max_body_bytes))
        if chat_request.model != config.model_name:
            raise APIError(404, f"model {chat_request.model!r} is not served here; this server serves "
                                f"{config.model_name!r}", param="model", code="model_not_found")
        if scheduler.load().requests >= config.max_batch + config.max_queue:  # refuse before decoding audio
            raise _queue_full(f"the server is at its limit ({config.max_batch} running, {config.max_queue} queued)")
        prepared = await run_in_threadpool(prepare_chat, processor, chat_request, limits, context_length)
        answer = PendingAnswer(scheduler, processor, prepared, arrived + config.timeout_s)
        reply = Reply(chat_request, config.model_name, prepared.prompt_tokens)
        if chat_request.stream:
            return StreamingResponse(reply.events(answer), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await reply.whole(answer, request))

    return app


class PendingAnswer:
    """One submitted request seen from the event loop: its text as tokens arrive, until it ends."""

    def __init__(self, scheduler: Scheduler, processor, chat: PreparedChat, deadline: float):
        self._scheduler, self._deadline = scheduler, deadline
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Token | Exception] = asyncio.Queue()
        self.text = AnswerText(processor)
        self.finish_reason: str | None = None
        try:
            self._request = scheduler.submit(chat, self._listen)
        except QueueFull as error:
            raise _queue_full(str(error)) from error
        except SchedulerStopped as error:
            raise _shutting_down() from error

    def _listen(self, event: Token | Exception) -> None:
        """On the scheduler thread: hand the event to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for this answer any more
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def cancel(self) -> None:
        """Free the slot (nothing happens once the answer has ended)."""
        self._scheduler.cancel(self._request)

    async def deltas(self) -> AsyncIterator[str]:
        """The answer's new text piece by piece; `finish_reason` is set at its end. Raises `APIError`
        at the deadline or when the model failed on this request."""
        while self.finish_reason is None:
            remaining = self._deadline - self._loop.time()
            try:
                event = await asyncio.wait_for(self._events.get(), timeout=max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise APIError(504, "the answer was not finished within the server's timeout (--timeout-s)",
                               type="timeout_error", code="timeout") from None
            if isinstance(event, Exception):
                raise _failure(event)
            delta = self.text.add(event.token)
            if event.finish_reason is not None:
                self.finish_reason = event.finish_reason
                delta += self.text.rest()
            if delta:
                yield delta


class Reply:
    """The response to one request, whole or streamed, in OpenAI's shapes."""

    def __init__(self, request: ChatRequest, model: str, prompt_tokens: int):
        self.request, self.model, self.prompt_tokens = request, model, prompt_tokens
        self.id, self.created = completion_id(), now()

    async def whole(self, answer: PendingAnswer, client: Request) -> dict:
        """Wait for the answer (cancelling it if the client disconnects first) → `chat.completion`."""
        collect = asyncio.ensure_future(self._collect(answer))
        watch = asyncio.ensure_future(_until_disconnected(client))
        try:
            await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            collect.cancel()  # nothing happens when it is done
            answer.cancel()  # a timeout, a failure or a gone client: free the slot (after the answer's end: nothing)
        if collect.cancelled():
            raise APIError(499, "the client closed the connection", code="client_closed_request")
        return collect.result()

    async def _collect(self, answer: PendingAnswer) -> dict:
        async for _ in answer.deltas():
            pass
        return completion_body(self.id, self.model, self.created, answer.text.text, answer.finish_reason,
                               self.prompt_tokens, len(answer.text.tokens))

    async def events(self, answer: PendingAnswer) -> AsyncIterator[str]:
        """`chat.completion.chunk` events: the role, the text as it grows, the finish reason, [the usage,]
        then ``[DONE]``; a failure mid-stream is one ``{"error": …}`` event. Cancellation (the client went
        away) frees the slot."""
        try:
            yield server_sent_event(self._chunk({"role": "assistant", "content": ""}))
            async for delta in answer.deltas():
                yield server_sent_event(self._chunk({"content": delta}))
            yield server_sent_event(self._chunk({}, answer.finish_reason))
            if self.request.include_usage:
                yield server_sent_event(usage_chunk_body(self.id, self.model, self.created, self.prompt_tokens,
                                                         len(answer.text.tokens)))
            yield server_sent_event("[DONE]")
        except APIError as error:
            yield server_sent_event(error.body())
        finally:
            answer.cancel()

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return chunk_body(self.id, self.model, self.created, delta, finish_reason)


async def _until_disconnected(client: Request) -> None:
    while not await client.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it (declared or received) exceeds `limit` bytes."""
    too_large = APIError(413, f"the request body is larger than the server's limit of {limit / 2**20:g} MB",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _queue_full(message: str) -> APIError:
    return APIError(429, message, type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")


def _failure(error: Exception) -> APIError:
    if isinstance(error, SchedulerStopped):
        return _shutting_down()
    return APIError(500, f"the model failed on this request: {one_line(error)}", type="server_error", code="model_error")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's (unknown route, wrong method), in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return await api_error(request, APIError(error.status_code, message, code=_http_code(error.status_code)))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return await api_error(request, APIError(500, f"internal error ({type(error).__name__}); the details are in the "
                                                      "server log", type="server_error", code="internal_error"))


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")


__all__ = ["PendingAnswer", "ServeConfig", "create_app"]
