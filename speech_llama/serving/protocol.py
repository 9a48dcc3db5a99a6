"""The OpenAI chat-completions shapes this server reads and writes.

Requests are validated with pydantic; a field it refuses becomes one `APIError` that names the
field (``messages[0].content[1]``). Fields of the OpenAI API that change nothing in greedy decoding
(``temperature``, ``top_p``, ``seed``, ``user``, …) are accepted and ignored; the few that would ask
for something this server does not do (several choices, stop sequences, tools, log-probabilities)
are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import APIError, bad_request

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")
PART_TYPES = ("text", "input_audio")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class InputAudio(BaseModel):
    data: str  # base64 of the whole file
    format: Literal[AUDIO_FORMATS]


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | AudioPart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: list[ContentPart]

    @field_validator("content", mode="before")
    @classmethod
    def text_as_one_part(cls, value: Any) -> Any:
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`'s body; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens; wins when both are given
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None  # ignored: decoding is always greedy
    n: int = 1
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def parse_chat_request(body: bytes) -> ChatRequest:
    """The request body → a `ChatRequest`, or an `APIError` (400) naming the first problem."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"the body is not valid JSON: {error}", code="invalid_json") from error
    if not isinstance(payload, dict):
        raise bad_request(f"the body must be a JSON object, got {type(payload).__name__}", code="invalid_json")
    try:
        request = ChatRequest.model_validate(payload)
    except ValidationError as error:
        raise _field_error(error.errors()[0]) from error
    _refuse_unsupported(request)
    return request


def _param(location: tuple) -> str:
    """pydantic's error location as a field path: ``messages[0].content[1].input_audio.format``."""
    path = ""
    for index, key in enumerate(location):
        if isinstance(key, int):
            path += f"[{key}]"
        elif index >= 2 and location[index - 2] == "content" and key in PART_TYPES:
            continue  # pydantic names the tag of a tagged union in the location; the request has no such level
        else:
            path += f".{key}" if path else str(key)
    return path


def _field_error(error: dict) -> APIError:
    param = _param(error["loc"])
    kind = error["type"]
    if kind == "union_tag_invalid":
        return bad_request(f"{param}: unsupported content part type {error['ctx']['tag']!r} "
                           f"(this server reads {' and '.join(repr(t) for t in PART_TYPES)})", param, "unsupported_content_part")
    if kind == "union_tag_not_found":
        return bad_request(f"{param}: a content part needs a 'type' ({' or '.join(repr(t) for t in PART_TYPES)})", param,
                           "unsupported_content_part")
    if kind == "list_type" and param.endswith(".content"):
        return bad_request(f"{param}: content must be a string or a list of content parts", param, "invalid_value")
    if param.endswith("input_audio.format"):
        return bad_request(f"{param}: unsupported audio format {error.get('input')!r} (supported: {', '.join(AUDIO_FORMATS)})",
                           param, "unsupported_audio_format")
    return bad_request(f"{param}: {error['msg']}" if param else error["msg"], param or None, "invalid_value")


def _refuse_unsupported(request: ChatRequest) -> None:
    if request.n != 1:
        raise bad_request(f"n={request.n}: this server returns one choice per request (n=1)", "n", "unsupported_parameter")
    if request.stop:
        raise bad_request("stop sequences are not supported; answers end at the model's end-of-turn token or max_tokens",
                          "stop", "unsupported_parameter")
    if request.tools:
        raise bad_request("tools are not supported by this server", "tools", "unsupported_parameter")
    if request.logprobs:
        raise bad_request("logprobs are not supported by this server", "logprobs", "unsupported_parameter")


# --- responses ------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(id: str, model: str, created: int, content: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    """A whole answer (`object: "chat.completion"`)."""
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(id: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    """One streamed piece (`object: "chat.completion.chunk"`): the role first, then content, then the finish reason."""
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk_body(id: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def models_body(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "speech-llama"}]}


def server_sent_event(payload: dict | str) -> str:
    """One SSE `data:` event (JSON on one line, or a literal such as ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


def now() -> int:
    return int(time.time())


__all__ = ["AUDIO_FORMATS", "AudioPart", "ChatRequest", "Message", "TextPart", "chunk_body", "completion_body",
           "completion_id", "models_body", "now", "parse_chat_request", "server_sent_event", "usage_chunk_body"]
