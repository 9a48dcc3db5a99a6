"""An OpenAI chat request → the project's prompt and 16 kHz clip; tokens → the answer's text.

Prompts are built as everywhere else in the project (`speech_llama.prompts.user_content`): a typed
user turn is its text; a spoken one is `<speech>` followed by the processor's `speech_instruction`,
or, when the turn also has text, by that text on a new line (the project's instructions after a clip
start with one). The processor's chat template adds its system prompt unless the request has one,
so a single-turn request gets exactly `qa_prompt`'s prompt: the answer equals
`continuous_greedy_answers` for the same question.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from ..audio import SAMPLE_RATE, audio_num_samples, read_audio
from ..errors import RecordsError
from ..prompts import user_content
from .errors import bad_request
from .protocol import AudioPart, ChatRequest, Message, TextPart


@dataclass(frozen=True)
class ChatLimits:
    """What one request may ask for: audio length (s) and new tokens (the default when it names none)."""

    max_audio_seconds: float = 30.0
    max_new_tokens: int = 256


@dataclass(frozen=True)
class PreparedChat:
    """A request ready for the batcher: the chat-template prompt (one `<speech>` where the clip goes),
    the clip (16 kHz mono float32, or None), the prompt's length in tokens (speech tokens included)
    and the answer's token budget."""

    prompt: str
    audio: np.ndarray | None
    prompt_tokens: int
    max_new_tokens: int


def prepare_chat(processor, request: ChatRequest, limits: ChatLimits, context_length: int) -> PreparedChat:
    """Check and convert one request; every problem is an `APIError` (400) naming its field."""
    max_new_tokens = _token_budget(request, limits)
    last = len(request.messages) - 1
    if request.messages[last].role != "user":
        raise bad_request(f"messages[{last}]: the last message must be the user's (the server answers it)",
                          f"messages[{last}].role", "invalid_value")
    conversation = [_turn(processor, index, message) for index, message in enumerate(request.messages)]
    audio_part = _only_audio_part(request.messages)
    audio = _decode_audio(processor, *audio_part, limits) if audio_part else None  # last: the costly check
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    prompt_tokens = count_prompt_tokens(processor, prompt, audio)
    if prompt_tokens + max_new_tokens > context_length:
        raise bad_request(f"the prompt is {prompt_tokens} tokens and max_tokens is {max_new_tokens}; together they "
                          f"exceed the model's context of {context_length} tokens", "messages", "context_length_exceeded")
    return PreparedChat(prompt=prompt, audio=audio, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens)


def count_prompt_tokens(processor, prompt: str, audio: np.ndarray | None) -> int:
    """The prompt's length as the processor tokenises it: `<speech>` (one added token) stands for
    `num_speech_tokens(len(audio))` placeholders."""
    length = len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return length + (processor.num_speech_tokens(len(audio)) - 1 if audio is not None else 0)


def chat_inputs(processor, group: list[tuple[str, np.ndarray | None]]):
    """The batcher's encoder: (prompt, clip) pairs → one left-padded processor batch."""
    audios = [audio for _, audio in group]
    return processor(text=[prompt for prompt, _ in group], audio=audios if any(a is not None for a in audios) else None,
                     sampling_rate=SAMPLE_RATE)


def _token_budget(request: ChatRequest, limits: ChatLimits) -> int:
    asked = request.requested_tokens
    if asked is None:
        return limits.max_new_tokens
    if asked > limits.max_new_tokens:
        param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        raise bad_request(f"{param} is {asked}; this server answers with at most {limits.max_new_tokens} tokens",
                          param, "invalid_value")
    return asked


def _only_audio_part(messages: list[Message]) -> tuple[str, AudioPart] | None:
    """(its field path, the part) of the request's one clip; more than one, or one outside a user turn, is refused."""
    found = [(f"messages[{m}].content[{p}]", part, message.role) for m, message in enumerate(messages)
             for p, part in enumerate(message.content) if isinstance(part, AudioPart)]
    for param, _, role in found:
        if role != "user":
            raise bad_request(f"{param}: input_audio is read in user messages only, not in a {role} message", param,
                              "unsupported_content_part")
    if len(found) > 1:
        raise bad_request(f"{found[1][0]}: at most one input_audio part per request (the model hears one clip per prompt)",
                          found[1][0], "too_many_audio_parts")
    return found[0][:2] if found else None


def _decode_audio(processor, param: str, part: AudioPart, limits: ChatLimits) -> np.ndarray:
    """base64 → 16 kHz mono float32 (other rates resampled, stereo down-mixed), within the length limits."""
    where = f"{param}.input_audio"
    try:
        raw = base64.b64decode(part.input_audio.data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"{where}.data: not valid base64 ({error})", f"{where}.data", "invalid_audio") from error
    if not raw:
        raise bad_request(f"{where}.data: the audio is empty", f"{where}.data", "invalid_audio")
    unreadable = bad_request(f"{where}.data: not audio this server can decode (a whole wav, flac, mp3 or ogg file, "
                             f"declared {part.input_audio.format!r})", f"{where}.data", "invalid_audio")
    try:
        # From the header first: a clip that is too long is refused before it is decoded.
        _check_seconds(audio_num_samples({"bytes": raw}, where=where), where, limits)
        audio = read_audio({"bytes": raw}, where=where)
    except RecordsError as error:
        raise unreadable from error
    _check_seconds(len(audio), where, limits)
    try:
        processor.check_speech_length(len(audio), where)  # at least one speech token
    except ValueError as error:
        raise bad_request(str(error), f"{where}.data", "audio_too_short") from error
    return audio


def _check_seconds(num_samples: int, where: str, limits: ChatLimits) -> None:
    seconds = num_samples / SAMPLE_RATE
    if seconds > limits.max_audio_seconds:
        raise bad_request(f"{where}: the audio is {seconds:.1f} s long; this server accepts at most "
                          f"{limits.max_audio_seconds:g} s", f"{where}.data", "audio_too_long")


def _turn(processor, index: int, message: Message) -> dict:
    """One message as the processor's chat template reads it (the project's `user_content` for user turns)."""
    texts = []
    for position, part in enumerate(message.content):
        if isinstance(part, TextPart):
            if processor.speech_token in part.text:
                param = f"messages[{index}].content[{position}].text"
                raise bad_request(f"{param}: text may not contain the audio placeholder {processor.speech_token!r}; "
                                  "send audio as an input_audio part", param, "invalid_value")
            texts.append(part.text)
    text = "\n".join(texts)
    role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for the system turn
    if role != "user":
        return {"role": role, "content": [{"type": "text", "text": text}]}
    spoken = any(isinstance(part, AudioPart) for part in message.content)
    if spoken:
        instruction = "\n" + text if text.strip() else None  # None: the processor's speech_instruction
        return {"role": "user", "content": user_content(processor, None, speech=True, instruction=instruction)}
    if not text.strip():
        raise bad_request(f"messages[{index}].content: the user message is empty (no text and no audio)",
                          f"messages[{index}].content", "invalid_value")
    return {"role": "user", "content": user_content(processor, text, speech=False)}


class AnswerText:
    """An answer's text as its tokens arrive. The answer is `decode(tokens, skip_special_tokens=True)`
    stripped (what `continuous_greedy_answers` returns); `add` returns only text that the final answer
    is sure to start with, so the streamed pieces join to exactly that answer."""

    def __init__(self, processor):
        self._processor = processor
        self.tokens: list[int] = []
        self._sent = ""

    @property
    def text(self) -> str:
        return self._processor.decode(self.tokens, skip_special_tokens=True).strip()

    def add(self, token: int) -> str:
        """Append a token; return the text it adds (empty while it ends inside a character)."""
        self.tokens.append(token)
        text = self.text
        if text.endswith("\ufffd") or not text.startswith(self._sent):  # a character split over tokens: wait for the rest
            return ""
        delta, self._sent = text[len(self._sent):], text
        return delta

    def rest(self) -> str:
        """At the end: whatever the final text adds to what `add` returned."""
        text = self.text
        delta = text[len(self._sent):] if text.startswith(self._sent) else ""
        self._sent = text
        return delta


__all__ = ["AnswerText", "ChatLimits", "PreparedChat", "chat_inputs", "count_prompt_tokens", "prepare_chat"]
