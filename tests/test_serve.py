"""`speech-llama serve`, driven with the real `openai` client over loopback HTTP.

The tiny random model is served in-process (uvicorn on a background thread, a free port); its
answers are compared with `continuous_greedy_answers` for the same prompt alone, typed and spoken,
whole and streamed, one at a time and concurrently. Limits get their status (413, 429, 504, 4xx
for every bad input) in OpenAI's error shape, and the server keeps answering afterwards. Tests that
need requests held in the batch pace the scheduler's steps (a gate or a short sleep per step) so
nothing depends on how fast this CPU is.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import soundfile
from openai import OpenAI

from speech_llama.audio import read_audio
from speech_llama.batching import continuous_greedy_answers, qa_batcher
from speech_llama.generate import load_model
from speech_llama.prompts import qa_inputs
from speech_llama.serving import ServeConfig, create_app, serving_in_background
from speech_llama.serving.chat import AnswerText

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny-random"
LIMITS = {"max_batch": 4, "max_queue": 8, "max_new_tokens": 32, "max_audio_seconds": 5.0, "max_body_bytes": 2**20}
QUESTION = "What is the capital of France?"


def clip_bytes(seconds: float, rate: int = 16000, seed: int = 0, format: str = "WAV") -> bytes:
    """Noise as an audio file in memory (a random model cannot tell speech from noise)."""
    samples = np.random.default_rng(seed).normal(0, 0.1, int(rate * seconds)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format)
    return buffer.getvalue()


def audio_part(raw: bytes, format: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode(), "format": format}}


def user(*content) -> list[dict]:
    return [{"role": "user", "content": content[0] if len(content) == 1 and isinstance(content[0], str) else list(content)}]


@contextlib.contextmanager
def serving(model_dir: Path, **limits):
    """A server for the block: SimpleNamespace(url, client, scheduler)."""
    model, processor = load_model(model_dir)
    app = create_app(model, processor, ServeConfig(model_name=NAME, **{**LIMITS, **limits}))
    with serving_in_background(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        yield SimpleNamespace(url=url, client=client, scheduler=app.state.scheduler)


def pace(scheduler, gate: threading.Event | None = None, delay_s: float = 0.0) -> None:
    """Make every scheduler step wait for `gate` and then `delay_s` (the batcher itself is unchanged)."""
    step = scheduler.batcher.step

    def paced_step():
        if gate is not None:
            gate.wait()
        time.sleep(delay_s)
        return step()

    scheduler.batcher.step = paced_step


def health(server) -> dict:
    return httpx.get(f"{server.url}/health").json()


def idle(load: dict) -> bool:
    return load["requests"] == load["running"] == load["waiting"] == 0


def wait_until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def ask(server, messages, max_tokens: int = 8, **options):
    return server.client.chat.completions.create(model=NAME, messages=messages, max_tokens=max_tokens, **options)


def streamed(server, messages, max_tokens: int = 8) -> tuple[str, list]:
    chunks = list(ask(server, messages, max_tokens, stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text, chunks


def alone(tiny, question, audio=None, max_tokens: int = 8, instruction=None) -> str:
    model, processor = tiny
    return continuous_greedy_answers(model, processor, [question], [audio], batch_size=1, max_new_tokens=max_tokens,
                                     instruction=instruction)[0]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serving(tiny_model_dir) as running:
        yield running


# --- answers ------------------------------------------------------------------------------------


def test_typed_question_gets_the_batch_answer_in_openai_shape(server, tiny):
    _, processor = tiny
    reply = ask(server, user(QUESTION), max_tokens=8)
    assert reply.object == "chat.completion" and reply.model == NAME and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == alone(tiny, QUESTION)
    prompt_tokens = qa_inputs(processor, [QUESTION], [None])["input_ids"].shape[1]
    assert reply.usage.prompt_tokens == prompt_tokens and reply.usage.completion_tokens <= 8
    assert choice.finish_reason == ("length" if reply.usage.completion_tokens == 8 else "stop")
    assert [model.id for model in server.client.models.list()] == [NAME]
    assert health(server)["status"] == "ok"


def test_spoken_question_streams_the_batch_answer(server, tiny):
    _, processor = tiny
    raw = clip_bytes(1.5, rate=24000)  # another rate: resampled to 16 kHz as everywhere in the project
    audio = read_audio({"bytes": raw}, where="test")
    text, chunks = streamed(server, user(audio_part(raw)), max_tokens=10)
    assert text == alone(tiny, None, audio, max_tokens=10)
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"} and len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(bool(chunk.choices and chunk.choices[0].delta.content) for chunk in chunks) > 1  # token by token
    assert chunks[-2].choices[0].finish_reason in ("stop", "length") and not chunks[-1].choices
    prompt_tokens = qa_inputs(processor, [None], [audio])["input_ids"].shape[1]
    assert chunks[-1].usage.prompt_tokens == prompt_tokens and chunks[-1].usage.completion_tokens <= 10
    # Text beside the clip replaces the speech instruction, on its own line (as the project's instructions are).
    spoken_with_text = ask(server, user(audio_part(raw), {"type": "text", "text": "Repeat what was said."}), 10)
    assert spoken_with_text.choices[0].message.content == alone(tiny, None, audio, 10, "\nRepeat what was said.")


def test_streamed_and_whole_answers_agree(server):
    whole = ask(server, user("Who wrote Hamlet?"), max_tokens=12).choices[0].message.content
    assert streamed(server, user("Who wrote Hamlet?"), max_tokens=12)[0] == whole


def test_concurrent_requests_join_one_batch_and_answer_as_sequential_ones(server):
    raw = clip_bytes(1.0, seed=3)
    requests = [(user(q), n) for q, n in (("What do bees make?", 6), ("Name a mammal that can fly.", 12),
                                          ("Who wrote Romeo and Juliet?", 9), ("What colour is the sky?", 3))]
    requests += [(user(audio_part(raw)), 7), (user(audio_part(clip_bytes(2.0, seed=4))), 11)]
    sequential = [ask(server, messages, n).choices[0].message.content for messages, n in requests]
    widths = []  # rows in the batch at each step
    batcher = server.scheduler.batcher
    step = batcher.step

    def recorded_step():
        widths.append(batcher.running)
        time.sleep(0.005)  # so that every request arrives while the others run, however fast this CPU is
        return step()

    batcher.step = recorded_step
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            concurrent = list(pool.map(lambda request: ask(server, *request).choices[0].message.content, requests))
    finally:
        del batcher.step
    assert concurrent == sequential
    assert max(widths) > 1, "the requests never shared a decode step"


def test_requests_join_and_leave_a_running_batch_with_their_own_answers(tiny):
    """The engine under the server: rows added mid-flight, one cancelled, budgets per request."""
    model, processor = tiny
    questions = ["What do bees make?", "Who wrote Hamlet?", "What is the largest planet?", "Name a colour."]
    expected = [alone(tiny, q, max_tokens=n) for q, n in zip(questions, (5, 9, 7, 4))]
    batcher = qa_batcher(model, processor, batch_size=2)
    tokens = {index: [] for index in range(4)}
    batcher.add(0, (questions[0], None), 5)
    batcher.add(1, (questions[1], None), 9)
    for _ in range(2):
        for token in batcher.step().tokens:
            tokens[token.request].append(token.token)
    batcher.add(2, (questions[2], None), 7)
    batcher.add(3, (questions[3], None), 4)
    assert batcher.cancel(1) and not batcher.cancel(1)
    while batcher.busy:
        for token in batcher.step().tokens:
            tokens[token.request].append(token.token)
    answers = {index: processor.decode(ids, skip_special_tokens=True).strip() for index, ids in tokens.items()}
    assert [answers[0], answers[2], answers[3]] == [expected[0], expected[2], expected[3]]
    assert 0 < len(tokens[1]) < 9 and batcher.running == batcher.waiting == 0


def test_streamed_pieces_never_split_a_character(tiny):
    _, processor = tiny
    words = " naïve café 🙂 日本語 done "
    text = AnswerText(processor)
    pieces = [text.add(token) for token in processor.tokenizer(words, add_special_tokens=False)["input_ids"]]
    pieces.append(text.rest())
    assert "".join(pieces) == words.strip() and not any("\ufffd" in piece for piece in pieces)


def test_the_space_try_it_streams_the_same_answer(tiny_model_dir, tiny):
    from spaces_demo.tryit import ModelHolder

    updates = list(ModelHolder(lambda: tiny_model_dir).answer_stream(QUESTION, None, 10))
    assert len(updates) > 2 and not any(update.done for update in updates[:-1]) and updates[-1].done
    assert all(later.text.startswith(earlier.text) for earlier, later in zip(updates, updates[1:]))
    assert updates[-1].text == alone(tiny, QUESTION, max_tokens=10) and "T2T" in updates[-1].markdown()


# --- hostile input ----------------------------------------------------------------------------


def body(messages=None, **fields) -> dict:
    return {"model": NAME, "messages": user("hi") if messages is None else messages, **fields}


HOSTILE = {  # case → (request body, status, code, words the message names)
    "malformed JSON": (b'{"model": "tiny-random", "messages": [', 400, "invalid_json", "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "invalid_json", "must be a JSON object"),
    "no model": ({"messages": user("hi")}, 400, "invalid_value", "model"),
    "empty messages": (body([]), 400, "invalid_value", "messages"),
    "unknown model": ({**body(), "model": "gpt-4o"}, 404, "model_not_found", "'gpt-4o' is not served"),
    "image part": (body(user({"type": "image_url", "image_url": {"url": "x"}})), 400, "unsupported_content_part", "'image_url'"),
    "part without type": (body(user({"text": "hi"})), 400, "unsupported_content_part", "needs a 'type'"),
    "content of a number": (body([{"role": "user", "content": 5}]), 400, "invalid_value", "string or a list"),
    "tool role": (body([{"role": "tool", "content": "x"}]), 400, "invalid_value", "messages[0].role"),
    "empty user text": (body(user("  ")), 400, "invalid_value", "empty"),
    "placeholder typed": (body(user("say <speech> now")), 400, "invalid_value", "audio placeholder"),
    "assistant last": (body([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]), 400,
                       "invalid_value", "last message"),
    "bad base64": (body(user({"type": "input_audio", "input_audio": {"data": "%%%not base64", "format": "wav"}})), 400,
                   "invalid_audio", "not valid base64"),
    "empty audio": (body(user({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}})), 400,
                    "invalid_audio", "empty"),
    "not audio": (body(user(audio_part(b"this is a text file, not a wav" * 20))), 400, "invalid_audio", "not audio"),
    "unsupported format": (body(user({"type": "input_audio", "input_audio": {"data": "aGk=", "format": "aac"}})), 400,
                           "unsupported_audio_format", "'aac'"),
    "too long audio": (body(user(audio_part(clip_bytes(6.0, rate=8000)))), 400, "audio_too_long", "at most 5 s"),
    "too short audio": (body(user(audio_part(clip_bytes(0.05)))), 400, "audio_too_short", "at least 100 ms"),
    "two clips": (body(user(audio_part(clip_bytes(0.5)), audio_part(clip_bytes(0.5)))), 400, "too_many_audio_parts",
                  "at most one input_audio"),
    "audio from the assistant": (body([{"role": "assistant", "content": [audio_part(clip_bytes(0.5))]},
                                       {"role": "user", "content": "hi"}]), 400, "unsupported_content_part", "user messages only"),
    "prompt beyond the context": (body(user("hello " * 2100)), 400, "context_length_exceeded", "the model's context of 2048"),
    "max_tokens too large": (body(max_tokens=10_000), 400, "invalid_value", "at most 32 tokens"),
    "max_tokens zero": (body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    "several choices": (body(n=3), 400, "unsupported_parameter", "n=3"),
    "stop sequences": (body(stop=["."]), 400, "unsupported_parameter", "stop sequences"),
    "body too large": (body(user(audio_part(bytes(2**20)))), 413, "request_too_large", "limit of 1 MB"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_bad_input_gets_its_4xx_in_openai_shape_and_the_server_keeps_serving(server, case):
    payload, status, code, words = HOSTILE[case]
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = httpx.post(f"{server.url}/v1/chat/completions", content=content,
                          headers={"Content-Type": "application/json"}, timeout=30)
    error = response.json()["error"]
    assert response.status_code == status, error
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert words in error["message"] and "\n" not in error["message"], error["message"]
    if isinstance(payload, dict) and case not in ("no model", "body too large"):  # the same refusal through the client
        with pytest.raises(openai.APIStatusError) as refused:
            server.client.chat.completions.create(**{key: value for key, value in payload.items()})
        assert refused.value.status_code == status and refused.value.body["code"] == code
    assert ask(server, user("still there?"), max_tokens=2).choices[0].message.content is not None


def test_a_chunked_body_over_the_limit_and_unknown_routes_are_refused_in_shape(server):
    chunks = (b" " * 2**16 for _ in range(20))  # no Content-Length: counted while it arrives
    response = httpx.post(f"{server.url}/v1/chat/completions", content=chunks, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("GET", "/v1/nothing", 404)):
        response = httpx.request(method, f"{server.url}{path}")
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_request_the_model_fails_on_gets_500_and_the_others_go_on(server):
    batcher = server.scheduler.batcher
    encode = batcher.encode

    def encode_or_fail(group):
        if any("explode" in prompt for prompt, _ in group):
            raise RuntimeError("simulated failure")
        return encode(group)

    batcher.encode = encode_or_fail
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            ask(server, user("please explode"))
        assert failed.value.status_code == 500 and failed.value.body["code"] == "model_error"
        assert "simulated failure" in failed.value.body["message"]
        assert ask(server, user("still there?"), max_tokens=2).choices[0].message.content is not None
    finally:
        batcher.encode = encode


# --- limits -------------------------------------------------------------------------------------


def test_a_full_queue_gets_429_and_held_requests_still_finish(tiny_model_dir):
    gate = threading.Event()
    with serving(tiny_model_dir, max_batch=1, max_queue=1) as server, ThreadPoolExecutor(2) as pool:
        pace(server.scheduler, gate)
        try:
            held = [pool.submit(ask, server, user(q), 4) for q in ("What do bees make?", "Who wrote Hamlet?")]
            wait_until(lambda: health(server)["requests"] == 2, "both requests are held")
            with pytest.raises(openai.RateLimitError) as refused:
                ask(server, user("one too many"))
            assert refused.value.body["code"] == "queue_full" and refused.value.response.headers["Retry-After"] == "1"
        finally:
            gate.set()
        assert all(future.result(timeout=30).choices[0].message.content for future in held)
        assert ask(server, user("and now?"), 2).choices[0].message.content is not None


def test_a_request_past_its_timeout_gets_504_and_frees_its_slot(tiny_model_dir):
    gate = threading.Event()
    with serving(tiny_model_dir, max_batch=1, max_queue=0, timeout_s=0.5) as server:
        pace(server.scheduler, gate)
        try:
            with pytest.raises(openai.InternalServerError) as late:
                ask(server, user(QUESTION))
            assert late.value.status_code == 504 and late.value.body["code"] == "timeout"
            assert health(server)["requests"] == 0
            stream = ask(server, user(QUESTION), stream=True)  # the status is sent before the answer: the error is an event
            with pytest.raises(openai.APIError, match="timeout"):
                list(stream)
            assert health(server)["requests"] == 0
        finally:
            gate.set()
        assert ask(server, user(QUESTION), 2).choices[0].message.content is not None


def test_a_client_that_goes_away_frees_its_slot(tiny_model_dir):
    """A closed stream, and an abandoned non-streaming request: both are cancelled at once. With one
    slot and no queue, the next request is answered only if the slot was freed."""
    with serving(tiny_model_dir, max_batch=1, max_queue=0, max_new_tokens=1500) as server:
        pace(server.scheduler, delay_s=0.02)  # 1500 tokens would take 30 s
        stream = ask(server, user(QUESTION), max_tokens=1500, stream=True)
        pieces = [chunk for chunk, _ in zip(stream, range(4))]
        assert pieces[-1].choices[0].delta.content and health(server)["running"] == 1
        stream.close()
        wait_until(lambda: idle(health(server)), "the closed stream's slot is free", timeout_s=5)
        assert ask(server, user("next"), 2).choices[0].message.content is not None

        with pytest.raises(openai.APITimeoutError):
            ask(server, user(QUESTION), max_tokens=1500, timeout=0.5)
        wait_until(lambda: idle(health(server)), "the abandoned request's slot is free", timeout_s=5)
        assert ask(server, user("next"), 2).choices[0].message.content is not None


# --- the command ----------------------------------------------------------------------------------


def test_the_command_serves_a_model_folder_until_interrupted(tiny_model_dir, tiny):
    command = [sys.executable, "-m", "apps.cli", "serve", "--model", str(tiny_model_dir), "--port", "0",
               "--max-new-tokens", "6", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = served_url(process, timeout_s=60)
        client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        assert [model.id for model in client.models.list()] == [tiny_model_dir.name]
        reply = client.chat.completions.create(model=tiny_model_dir.name, messages=user(QUESTION))
        assert reply.choices[0].message.content == alone(tiny, QUESTION, max_tokens=6)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.communicate()


def served_url(process: subprocess.Popen, timeout_s: float) -> str:
    """The base URL the command prints once the model is loaded."""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = process.stdout.readline()
                assert line, f"the command exited: {process.communicate()[1][-2000:]}"
                found = re.search(r"(http://\S+/v1)", line)
                if found:
                    return found.group(1)
    raise AssertionError("the command printed no URL in time")


@pytest.mark.parametrize("argv, words", [
    (["--max-audio-seconds", "60"], "max_audio_seconds (--max-audio-seconds) must be in (0, 30]"),
    (["--max-batch", "0"], "max_batch (--max-batch) must be >= 1"),
    (["--port", "70000"], "--port must be in 0 … 65535"),
])
def test_bad_options_are_one_line_errors(tiny_model_dir, capsys, argv, words):
    from apps import cli

    assert cli.main(["serve", "--model", str(tiny_model_dir), *argv]) == 2
    # transformers may log a warning of its own above it (when a logging handler is configured)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("speech-llama serve: error:") and words in err, err


# --- real weights -------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_the_aligned_release_answers_a_typed_question(tmp_path):
    from alignment.release import assemble_aligned

    model_dir = assemble_aligned(tmp_path / "offline-mini-aligned")
    model, processor = load_model(model_dir)
    expected = continuous_greedy_answers(model, processor, [QUESTION], None, batch_size=1, max_new_tokens=16)[0]
    app = create_app(model, processor, ServeConfig(model_name="offline-mini-aligned", max_new_tokens=16))
    with serving_in_background(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="offline-mini-aligned", messages=user(QUESTION), stream=True))
    assert text == expected and "Paris" in text
