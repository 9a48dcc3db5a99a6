"""Greedy answering with continuous batching: a finished row's slot is refilled at once.

`model.generate` on a fixed batch runs until its longest answer ends, so short answers leave their
rows idle (on offline-mini's QA, answers average ~18 of 32 tokens: ~40 % of the batch compute was
padding). Here each step decodes one token for every active row; a row that emits end-of-turn or
reaches `max_new_tokens` leaves the batch and the next questions are prefilled (speech features
included) and joined to the running KV cache, left-padded to its length. Positions come from the
attention mask (the model derives them per row), so a row's tokens see exactly what they would
see alone: greedy answers equal batch-size-1 `generate` (tested).

Every prompt starts with the same tokens (system prompt, user header: ~2/3 of a T2T prompt), so
their keys and values are computed once (`SharedPrefix`) and each prefill runs only the rest of
its prompts; a row's cache is then [prefix][left padding][its own tokens], which the mask and the
mask-derived positions read exactly as one unpadded prompt.

`ContinuousBatcher` is that loop one step at a time, for callers whose requests arrive while it runs
(`speech-llama serve`): requests are added and cancelled between steps, and each step reports the
tokens it produced. `continuous_greedy_answers` drives it over a fixed list of questions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache

from .prompts import qa_inputs


@dataclass
class RunningBatch:
    """The rows being decoded: their request ids, tokens so far, mask (B, L) and KV cache."""

    requests: list[Hashable] = field(default_factory=list)
    generated: list[list[int]] = field(default_factory=list)
    attention_mask: torch.Tensor | None = None
    cache: DynamicCache | None = None

    def __len__(self) -> int:
        return len(self.requests)


def _left_pad_cache(cache: DynamicCache, width: int) -> None:
    """Prepend `width` empty (masked) positions to every layer's keys and values (B, H, L, D)."""
    if width <= 0:
        return
    for layer in cache.layers:
        layer.keys = F.pad(layer.keys, (0, 0, width, 0))
        layer.values = F.pad(layer.values, (0, 0, width, 0))


def _join(batch: RunningBatch, mask: torch.Tensor, cache: DynamicCache) -> None:
    """Append prefilled rows (mask (b, l), cache) to the running batch, aligning lengths by left padding."""
    if batch.cache is None:
        batch.attention_mask, batch.cache = mask, cache
        return
    running_length, new_length = batch.attention_mask.shape[1], mask.shape[1]
    _left_pad_cache(batch.cache, new_length - running_length)
    _left_pad_cache(cache, running_length - new_length)
    width = max(running_length, new_length)
    batch.attention_mask = torch.cat(
        [F.pad(batch.attention_mask, (width - running_length, 0)), F.pad(mask, (width - new_length, 0))]
    )
    for running_layer, new_layer in zip(batch.cache.layers, cache.layers):
        running_layer.keys = torch.cat([running_layer.keys, new_layer.keys])
        running_layer.values = torch.cat([running_layer.values, new_layer.values])


def _keep_rows(batch: RunningBatch, keep: list[int]) -> None:
    """Drop finished rows, then the leading columns no remaining row attends to."""
    if not keep:
        batch.requests, batch.generated, batch.attention_mask, batch.cache = [], [], None, None
        return
    index = torch.tensor(keep, dtype=torch.long, device=batch.attention_mask.device)
    batch.requests = [batch.requests[i] for i in keep]
    batch.generated = [batch.generated[i] for i in keep]
    mask = batch.attention_mask.index_select(0, index)
    unused = int(mask.any(0).long().argmax())
    batch.attention_mask = mask[:, unused:]
    for layer in batch.cache.layers:
        layer.keys = layer.keys.index_select(0, index)[:, :, unused:]
        layer.values = layer.values.index_select(0, index)[:, :, unused:]


def _cache_of(layers) -> DynamicCache:
    """A DynamicCache holding the given (keys, values) pair of each layer, in order."""
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


def _move_rows(source: RunningBatch, target: RunningBatch, count: int) -> None:
    """Move the first `count` rows of `source` (prefilled, waiting) into `target` (decoding)."""
    cache = _cache_of((layer.keys[:count], layer.values[:count]) for layer in source.cache.layers)
    _join(target, source.attention_mask[:count], cache)
    target.requests += source.requests[:count]
    target.generated += source.generated[:count]
    _keep_rows(source, list(range(count, len(source))))


@dataclass
class SharedPrefix:
    """Token ids every prompt starts with and their keys/values (1, H, p, D) per layer, computed once."""

    ids: list[int] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def covers(self, rows: list[list[int]]) -> bool:
        width = len(self.ids)
        return width > 0 and all(row[:width] == self.ids for row in rows)

    def compute(self, model, ids: list[int]) -> None:
        outputs = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True, logits_to_keep=1)
        self.ids = ids
        self.layers = [(layer.keys, layer.values) for layer in outputs.past_key_values.layers]

    def cache_for(self, rows: int) -> DynamicCache:
        """A fresh cache holding the prefix for `rows` rows (the model appends to it)."""
        return _cache_of((keys.expand(rows, -1, -1, -1).contiguous(), values.expand(rows, -1, -1, -1).contiguous())
                         for keys, values in self.layers)


def _common_prefix_length(rows: list[list[int]], stop_token: int | None) -> int:
    """Length of the leading ids all rows share, ending before any `stop_token` and before each row's last id."""
    width = min(len(row) for row in rows) - 1  # every row keeps one token, so its next-token logits are computed
    for position in range(width):
        token = rows[0][position]
        if token == stop_token or any(row[position] != token for row in rows):
            return position
    return max(width, 0)


def _unpadded_rows(inputs) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]


def _end_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        raise ValueError("the model's generation_config has no eos_token_id: answers would never end")
    return set(eos if isinstance(eos, (list, tuple)) else [eos])


def _prefill(model, processor, batch: RunningBatch, admitted: list[Hashable], inputs, prefix: SharedPrefix) -> None:
    """Run the prompts of `admitted` requests (`inputs`: their left-padded processor batch), after the
    shared prefix when they have one; join their cache to the batch and record their first token."""
    inputs = inputs.to(model.device)
    rows = _unpadded_rows(inputs)
    if not prefix.covers(rows):
        # A prefix learned from other prompts only shrinks (its rows shared more than these do).
        shared = _common_prefix_length(rows + ([prefix.ids + [-1]] if prefix.ids else []), model.config.speech_token_id)
        if shared:
            prefix.compute(model, rows[0][:shared])
    if prefix.covers(rows):
        width = len(prefix.ids)
        # The processor's tokenizer pads on the left (generation).
        suffix = processor.tokenizer.pad({"input_ids": [row[width:] for row in rows]}, return_tensors="pt").to(model.device)
        attention_mask = torch.cat([suffix["attention_mask"].new_ones(len(rows), width), suffix["attention_mask"]], dim=1)
        speech = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        outputs = model(input_ids=suffix["input_ids"], attention_mask=attention_mask, past_key_values=prefix.cache_for(len(rows)),
                        use_cache=True, logits_to_keep=1, **speech)
    else:  # nothing in common: whole prompts
        attention_mask = inputs["attention_mask"]
        outputs = model(**inputs, use_cache=True, logits_to_keep=1)
    if outputs.get("attention_mask") is not None:  # silent speech frames were masked out
        attention_mask = outputs.attention_mask
    _join(batch, attention_mask, outputs.past_key_values)
    batch.requests += admitted
    batch.generated += [[token] for token in outputs.logits[:, -1].argmax(-1).tolist()]


def _decode_step(model, batch: RunningBatch) -> None:
    """Feed every row its last token; append the next one."""
    last_tokens = torch.tensor([[tokens[-1]] for tokens in batch.generated], device=batch.attention_mask.device)
    step_mask = F.pad(batch.attention_mask, (0, 1), value=1)
    outputs = model(input_ids=last_tokens, attention_mask=step_mask, past_key_values=batch.cache, use_cache=True)
    batch.attention_mask = step_mask
    for tokens, token in zip(batch.generated, outputs.logits[:, -1].argmax(-1).tolist()):
        tokens.append(token)


@dataclass(frozen=True)
class Token:
    """One new token of a request; its last one carries `finish_reason`: "stop" (an end-of-turn id,
    which is part of the answer's tokens) or "length" (the request's `max_new_tokens` reached)."""

    request: Hashable
    token: int
    finish_reason: str | None = None


@dataclass
class Step:
    """What one `ContinuousBatcher.step` did: the new tokens in row order, and the requests whose
    prefill raised (they are dropped; the rows already decoding are untouched)."""

    tokens: list[Token] = field(default_factory=list)
    failed: dict[Hashable, Exception] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return sum(token.finish_reason is not None for token in self.tokens)


# A group of admitted requests' prompts (what `add` was given, in admission order) → their left-padded processor batch.
Encoder = Callable[[list[Any]], Any]


class ContinuousBatcher:
    """Greedy continuous batching one step at a time: add and cancel requests between steps.

    Each `step` first admits waiting requests when a slot is free (up to `batch_size` prompts in one
    prefill, since one prompt alone costs about half of what eight together cost on CPU; the rows
    wait prefilled in `ready` until slots free), then decodes one token for every running row
    (at most `batch_size`). A request leaves at its end-of-turn token or at its own token budget.
    `encode` turns a group's prompts (opaque to the batcher) into model inputs, so each caller
    keeps its own prompt format.
    """

    def __init__(self, model, processor, batch_size: int, encode: Encoder):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor, self.batch_size, self.encode = model, processor, batch_size, encode
        self.end_ids = _end_ids(model)
        self._waiting: deque[Hashable] = deque()
        self._prompts: dict[Hashable, Any] = {}  # waiting requests' prompts, until their prefill
        self._budgets: dict[Hashable, int] = {}  # max_new_tokens of every request not finished
        self._batch, self._ready = RunningBatch(), RunningBatch()  # decoding rows; prefilled rows waiting for a slot
        self._prefix = SharedPrefix()

    @property
    def running(self) -> int:
        """Requests prefilled or decoding."""
        return len(self._batch) + len(self._ready)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self.running)

    def add(self, request: Hashable, prompt: Any, max_new_tokens: int) -> None:
        """Queue a request (ids must be unique among unfinished ones); it is admitted at a step with a free slot."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if request in self._budgets:
            raise ValueError(f"request {request!r} is already queued or running")
        self._waiting.append(request)
        self._prompts[request] = prompt
        self._budgets[request] = max_new_tokens

    def cancel(self, request: Hashable) -> bool:
        """Drop a waiting or running request (its slot is free at the next step); False if unknown or finished."""
        if self._budgets.pop(request, None) is None:
            return False
        if request in self._prompts:  # still waiting
            del self._prompts[request]
            self._waiting.remove(request)
            return True
        for batch in (self._batch, self._ready):
            if request in batch.requests:
                _keep_rows(batch, [row for row, other in enumerate(batch.requests) if other != request])
        return True

    def drop_running(self) -> list[Hashable]:
        """Forget every prefilled and decoding row (after a failed step left their caches unusable);
        returns their requests. Waiting requests stay."""
        dropped = self._batch.requests + self._ready.requests
        for request in dropped:
            self._budgets.pop(request, None)
        self._batch, self._ready = RunningBatch(), RunningBatch()
        return dropped

    @torch.no_grad()
    def step(self) -> Step:
        """Admit (prefill) when a slot is free, move prefilled rows into free slots, decode one token per row."""
        step = Step()
        free = self.batch_size - len(self._batch)
        if free and len(self._ready) < free and self._waiting:
            self._admit([self._waiting.popleft() for _ in range(min(self.batch_size, len(self._waiting)))], step)
        if free and len(self._ready):
            _move_rows(self._ready, self._batch, min(free, len(self._ready)))
        if len(self._batch):
            _decode_step(self.model, self._batch)
            step.tokens += self._report(self._batch, first_row=0)
        return step

    def _admit(self, admitted: list[Hashable], step: Step) -> None:
        prompts = [self._prompts.pop(request) for request in admitted]
        first_row = len(self._ready)
        try:
            _prefill(self.model, self.processor, self._ready, admitted, self.encode(prompts), self._prefix)
        except Exception as error:  # a bad prompt fails its own group only; the running rows are untouched
            for request in admitted:
                self._budgets.pop(request, None)
                step.failed[request] = error
            return
        step.tokens += self._report(self._ready, first_row)

    def _report(self, batch: RunningBatch, first_row: int) -> list[Token]:
        """The last token of rows `first_row`… (rows before it reported theirs already); rows that
        ended leave the batch."""
        tokens, keep = [], list(range(first_row))
        for row in range(first_row, len(batch)):
            request, generated = batch.requests[row], batch.generated[row]
            reason = self._finish_reason(request, generated)
            tokens.append(Token(request, generated[-1], reason))
            if reason is None:
                keep.append(row)
            else:
                del self._budgets[request]
        if len(keep) < len(batch):
            _keep_rows(batch, keep)
        return tokens

    def _finish_reason(self, request: Hashable, generated: list[int]) -> str | None:
        if generated[-1] in self.end_ids:
            return "stop"
        return "length" if len(generated) >= self._budgets[request] else None


def qa_batcher(model, processor, batch_size: int, instruction: str | None = None) -> ContinuousBatcher:
    """A batcher whose requests are (question, audio) pairs, prompted as everywhere in the project
    (`prompts.qa_inputs`; a request is S2T when its audio is given)."""

    def encode(group: list[tuple[str | None, np.ndarray | None]]):
        return qa_inputs(processor, [question for question, _ in group], [audio for _, audio in group], instruction)

    return ContinuousBatcher(model, processor, batch_size, encode)


def steps_to_end(batcher: ContinuousBatcher) -> Iterator[Step]:
    """Step until every request added has ended; a failed prefill raises its own error."""
    while batcher.busy:
        step = batcher.step()
        if step.failed:
            raise next(iter(step.failed.values()))
        yield step


@torch.no_grad()
def continuous_greedy_answers(
    model,
    processor,
    questions: Sequence[str | None],
    audios: Sequence[np.ndarray | None] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    progress: bool = False,
    description: str = "answers",
    instruction: str | None = None,
) -> list[str]:
    """Greedy answers to every request, in input order; request i is S2T when `audios[i]` is given.

    `instruction` replaces the S2T prompt's instruction (read-back: `generate.TRANSCRIPT_INSTRUCTION`).

    Requests are admitted in the given order (sort them by length first to pad less), at most
    `batch_size` decoded at once; prompts are prefilled `batch_size` at a time and join the decoding
    rows as slots free.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    audios = list(audios) if audios is not None else [None] * len(questions)
    if len(audios) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(audios)} audio entries")
    batcher = qa_batcher(model, processor, batch_size, instruction)
    for index, request in enumerate(zip(questions, audios)):
        batcher.add(index, request, max_new_tokens)
    answers: list[list[int]] = [[] for _ in questions]
    with tqdm(total=len(questions), desc=description, unit="answer", disable=not progress) as bar:
        for step in steps_to_end(batcher):
            for token in step.tokens:
                answers[token.request].append(token.token)
            bar.update(step.finished)
    return [text.strip() for text in processor.batch_decode(answers, skip_special_tokens=True)]
