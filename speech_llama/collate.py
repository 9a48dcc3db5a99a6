"""Records → labelled model batches (the one collator that training, importance and perplexity share).

Each record becomes `prompt + completion` in LLaMA-Omni's chat format; the loss is taken on the
completion (the response, or the first gold answer for QA data, plus the end-of-turn token) only.
With `input="speech"` the question's audio fills the `<speech>` placeholder (S2T prompt); with
`input="text"` the question text stands in its place (T2T prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .audio import SAMPLE_RATE, audio_num_samples, read_audio
from .prompts import TRANSCRIPT_INSTRUCTION, qa_training_text

InputKind = Literal["text", "speech"]


def target_text(record: dict[str, Any], where: str) -> str:
    """The training target of a record: its `response`, else its first gold answer."""
    response = record.get("response")
    if response:
        return response
    answers = record.get("answers") or ([record["answer"]] if record.get("answer") else [])
    if not answers:
        raise ValueError(f"{where}: record has neither 'response' nor 'answers' to train on")
    return answers[0]


def record_location(source: str, record: dict[str, Any]) -> str:
    """"<source>, row <1-based row>" for error messages (the row from the `_row` column)."""
    row = record.get("_row")
    return f"{source}, row {row + 1}" if isinstance(row, int) else f"{source}, record ?"


def check_clip_lengths(records, locate, processor, batch_size: int = 256) -> int:
    """Every record's clip fits the encoder (`processor.check_speech_length`: ≤ 30 s, ≥ 0.1 s),
    checked from the file headers before any batch is built; the first that does not is reported
    with its file, line and column. Returns how many clips were checked."""
    if "audio" not in records.column_names:
        return 0
    checked = 0
    for batch in records.select_columns(["audio"]).iter(batch_size=batch_size):
        for value in batch["audio"]:
            if value is not None:
                where = locate(checked, "audio")
                processor.check_speech_length(audio_num_samples(value, where=where), where)
            checked += 1
    return checked


@dataclass
class QACollator:
    """Collate contract records into `input_ids`, `attention_mask`, `labels` (+ speech features).

    Args:
        processor: the model's `SpeechLlamaProcessor`.
        input: "text" (T2T prompt) or "speech" (S2T prompt; every record needs `audio`).
        max_length: completions are cut so a row has at most this many tokens (the prompt, with
            its speech placeholders, is never cut).
    Returns per batch: `input_ids`, `attention_mask`, `labels` (B, L), left-padded; with speech,
    `input_features` (B, n_mels, T_mel) and `input_features_mask` (B, T_mel).
    """

    processor: Any
    input: InputKind = "text"
    max_length: int | None = None

    def __post_init__(self):
        if self.input not in ("text", "speech"):
            raise ValueError(f"input must be 'text' or 'speech', got {self.input!r}")

    def as_text(self, record: dict[str, Any]) -> bool:
        """Whether this record's prompt carries the question text (T2T) rather than its audio."""
        return self.input == "text"

    def transcript_task(self, record: dict[str, Any]) -> bool:
        """Whether this record is trained to repeat its question instead of answering it."""
        return False

    def row_length(self, record: dict[str, Any]) -> int:
        """A record's row length in tokens before padding: question tokens (or, for speech, the
        clip's placeholders, from the file header) plus completion tokens, without the template."""
        where = self._where(record)
        target, _ = self._target(record, where)
        count = len(self.processor.tokenizer(target, add_special_tokens=False)["input_ids"])
        if self.as_text(record):
            return count + len(self.processor.tokenizer(record.get("question") or "", add_special_tokens=False)["input_ids"])
        audio = self._audio(record, where)
        return count + self.processor.num_speech_tokens(audio_num_samples(audio, where=f"{where}, column 'audio'"))

    @staticmethod
    def _audio(record: dict[str, Any], where: str) -> Any:
        """The record's `audio` value; a speech row without one is an error naming the record."""
        if record.get("audio") is None:
            raise ValueError(f"{where}, column 'audio': speech input needs audio for every record")
        return record["audio"]

    def _where(self, record: dict[str, Any]) -> str:
        return f"record {record.get('_row', '?')}"

    def _target(self, record: dict[str, Any], where: str) -> tuple[str, str | None]:
        """(completion text, prompt instruction or None for the default QA one)."""
        if self.transcript_task(record):
            return record["question"], TRANSCRIPT_INSTRUCTION
        return target_text(record, where), None

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One batch whose rows are T2T or S2T as `as_text` decides, padded together."""
        prompts, completions, audios = [], [], []
        for record in records:
            as_text = self.as_text(record)
            where = self._where(record)
            target, instruction = self._target(record, where)
            prompt, completion = qa_training_text(
                self.processor, target, question=record.get("question"), speech=not as_text, instruction=instruction
            )
            prompts.append(prompt)
            completions.append(completion)
            if as_text:
                audios.append(None)
            else:
                audios.append(read_audio(self._audio(record, where), where=f"{where}, column 'audio'"))
        has_speech = any(audio is not None for audio in audios)
        encoded = self.processor(text=prompts, audio=audios if has_speech else None, sampling_rate=SAMPLE_RATE,
                                 padding=False, return_tensors=None)
        completion_ids = self.processor.tokenizer(completions, add_special_tokens=False)["input_ids"]
        batch = self._pad(encoded["input_ids"], completion_ids)
        if has_speech:
            batch["input_features"] = torch.as_tensor(np.asarray(encoded["input_features"]))
            batch["input_features_mask"] = torch.as_tensor(np.asarray(encoded["input_features_mask"]))
        return batch

    def _pad(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        rows = []
        for prompt, completion in zip(prompt_ids, completion_ids):
            if self.max_length is not None:
                completion = completion[: max(1, self.max_length - len(prompt))]
            rows.append((list(prompt) + list(completion), len(prompt)))
        width = max(len(ids) for ids, _ in rows)
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for row, (ids, prompt_length) in enumerate(rows):
            start = width - len(ids)  # left padding, as for generation
            input_ids[row, start:] = torch.tensor(ids)
            attention_mask[row, start:] = 1
            labels[row, start + prompt_length :] = torch.tensor(ids[prompt_length:])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _index_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """`order` cut into consecutive batches of at most `batch_size` indices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def sorted_index_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (ties in input order), so left padding wastes little compute."""
    return _index_batches(sorted(range(len(lengths)), key=lambda i: (lengths[i], i)), batch_size)


def _rows(records, indices) -> list[dict[str, Any]]:
    chunk = records[indices] if not isinstance(records, list) else [records[i] for i in indices]
    if isinstance(chunk, dict):  # a datasets slice is columnar
        chunk = [dict(zip(chunk, values)) for values in zip(*chunk.values())]
    for index, record in zip(indices, chunk):
        record.setdefault("_row", index)
    return chunk


def iterate_batches(records, collator: QACollator, batch_size: int, by_length: bool = False):
    """Yield collated batches over a `datasets.Dataset` or list of records: in order, or (`by_length`)
    grouped by `QACollator.row_length` so rows of a batch pad little; a sum over batches is the same
    either way up to float rounding."""
    if by_length:
        batches = sorted_index_batches([collator.row_length(_rows(records, [i])[0]) for i in range(len(records))], batch_size)
    else:
        batches = _index_batches(list(range(len(records))), batch_size)
    for indices in batches:
        yield collator(_rows(records, indices))
