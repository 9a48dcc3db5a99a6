"""Response perplexity: logits only from the first labelled position on, loss only on labelled tokens,
must equal the plain full-logit computation record by record."""

from __future__ import annotations

import json
import math

import pytest
import soundfile
import torch
from helpers import noise_clip

from speech_llama.collate import QACollator
from speech_llama.perplexity import response_nll, response_perplexity
from speech_llama.records import load_records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Questions and responses of different lengths, so each row's response starts elsewhere."""
    folder = tmp_path_factory.mktemp("perplexity-records")
    (folder / "audio").mkdir()
    rows = []
    for i in range(5):
        soundfile.write(folder / "audio" / f"{i}.wav", noise_clip(0.4 + 0.3 * i, seed=i), 16000)
        rows.append({"question": "Tell me " + "more " * (3 * i) + "?", "response": "word " * (1 + 4 * (4 - i)),
                     "audio": f"audio/{i}.wav"})
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_records(folder / "data.jsonl", require_audio=True)


@torch.no_grad()
def full_logit_nll(model, processor, record, input_kind) -> tuple[float, int]:
    """Σ −log p over one record's labelled tokens from the whole (1, L, V) logits."""
    batch = QACollator(processor, input=input_kind)([record])
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1]
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
    return float(nll), int((targets != -100).sum())


@pytest.mark.parametrize("input_kind", ["text", "speech"])
def test_batched_response_perplexity_equals_the_full_logit_one_record_at_a_time(tiny, records, input_kind):
    model, processor = tiny
    reference = [full_logit_nll(model, processor, records[i], input_kind) for i in range(len(records))]
    total_nll, total_tokens = map(sum, zip(*reference))
    result = response_perplexity(model, processor, records, input=input_kind, batch_size=3)
    assert result.tokens == total_tokens
    assert result.nll == pytest.approx(total_nll / total_tokens, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)


def test_response_nll_keeps_the_graph_and_counts_only_labelled_tokens(tiny, records):
    model, processor = tiny
    batch = QACollator(processor, input="text")([records[i] for i in range(3)])
    nll, tokens = response_nll(model, batch)
    assert nll.requires_grad and tokens == int((batch["labels"][:, 1:] != -100).sum())
    unlabelled = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    nothing, none = response_nll(model, unlabelled)
    assert float(nothing.detach()) == 0.0 and none == 0


@pytest.mark.parametrize("input_kind", ["text", "speech"])
def test_batches_by_length_group_similar_rows_and_cover_every_record_once(tiny, records, input_kind):
    from speech_llama.collate import iterate_batches

    _, processor = tiny
    collator = QACollator(processor, input=input_kind)
    lengths = [collator.row_length(records[i]) for i in range(len(records))]
    seen = []
    for batch in iterate_batches(records, _RowRecorder(collator, seen), 2, by_length=True):
        assert batch["input_ids"].shape[0] <= 2
    assert sorted(row for rows in seen for row in rows) == list(range(len(records)))
    assert [lengths[row] for rows in seen for row in rows] == sorted(lengths)  # shortest rows first
    in_order = []
    list(iterate_batches(records, _RowRecorder(collator, in_order), 2))
    assert in_order == [[0, 1], [2, 3], [4]]


class _RowRecorder:
    """A collator that records which rows each batch held (by their `_row`)."""

    def __init__(self, collator, seen):
        self.collator, self.seen = collator, seen

    def row_length(self, record):
        return self.collator.row_length(record)

    def __call__(self, rows):
        self.seen.append([row["_row"] for row in rows])
        return self.collator(rows)


def test_row_length_counts_speech_placeholders_for_speech_and_question_tokens_for_text(tiny, records):
    _, processor = tiny
    record = records[4]
    completion = len(processor.tokenizer(record["response"], add_special_tokens=False)["input_ids"])
    question = len(processor.tokenizer(record["question"], add_special_tokens=False)["input_ids"])
    assert QACollator(processor, input="text").row_length(record) == completion + question
    placeholders = processor.num_speech_tokens(int(16000 * (0.4 + 0.3 * 4)))
    assert QACollator(processor, input="speech").row_length(record) == completion + placeholders
