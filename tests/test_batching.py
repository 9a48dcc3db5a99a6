"""Continuous batching gives the answers of one-at-a-time `generate`, row for row."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from speech_llama.batching import SharedPrefix, _common_prefix_length, continuous_greedy_answers
from speech_llama.generate import generate_answers

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "What colour is the sky on a clear day?",
    "What is the largest planet in the solar system?",
    "What do bees make?",
    "Name a mammal that can fly.",
]


def one_at_a_time(model, processor, questions, audios, max_new_tokens):
    return [generate_answers(model, processor, [q], [a], max_new_tokens)[0] for q, a in zip(questions, audios)]


@pytest.fixture
def tiny_with_early_ends(tiny):
    """The tiny random model with several end tokens, so rows finish at different steps."""
    model, processor = tiny
    model = copy.copy(model)
    model.generation_config = copy.deepcopy(model.generation_config)
    vocabulary = model.config.text_config.vocab_size
    model.generation_config.eos_token_id = list(range(0, vocabulary, 9))
    return model, processor


def test_mixed_text_and_speech_rows_equal_one_at_a_time_on_tiny(tiny_with_early_ends):
    model, processor = tiny_with_early_ends
    rng = np.random.default_rng(0)
    audios = [None, rng.normal(0, 0.1, 16000).astype(np.float32), None,
              rng.normal(0, 0.1, 48000).astype(np.float32), None, None, rng.normal(0, 0.1, 8000).astype(np.float32)]
    questions = [None if audio is not None else q for q, audio in zip(QUESTIONS, audios)]
    expected = one_at_a_time(model, processor, questions, audios, max_new_tokens=12)
    lengths = {len(processor.tokenizer(answer)["input_ids"]) for answer in expected}
    assert len(lengths) > 1, "the fixture should make answers end at different steps"
    for batch_size in (1, 3, 8):
        assert continuous_greedy_answers(model, processor, questions, audios, batch_size, 12) == expected


def test_real_answers_equal_one_at_a_time_on_offline_mini(offline_mini):
    model, processor = offline_mini
    expected = one_at_a_time(model, processor, QUESTIONS, [None] * len(QUESTIONS), max_new_tokens=24)
    assert any("Paris" in answer for answer in expected)
    assert continuous_greedy_answers(model, processor, QUESTIONS, None, batch_size=3, max_new_tokens=24) == expected


def test_bad_arguments_are_named(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="batch_size"):
        continuous_greedy_answers(model, processor, ["q"], batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        continuous_greedy_answers(model, processor, ["q"], max_new_tokens=0)
    with pytest.raises(ValueError, match="2 questions but 1 audio"):
        continuous_greedy_answers(model, processor, ["a", "b"], [None])


def test_common_prefix_stops_before_speech_and_keeps_a_token_per_row():
    speech = 99
    assert _common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], speech) == 3
    assert _common_prefix_length([[1, 2, speech, speech, 7], [1, 2, speech, speech, 7]], speech) == 2
    assert _common_prefix_length([[1, 2, 3], [1, 2, 3]], speech) == 2  # identical prompts: the last token is run
    assert _common_prefix_length([[4, 2], [1, 2]], speech) == 0


def test_shared_prefix_is_computed_once_for_many_prompts(tiny_with_early_ends, monkeypatch):
    model, processor = tiny_with_early_ends
    computed = []
    original = SharedPrefix.compute
    monkeypatch.setattr(SharedPrefix, "compute", lambda self, m, ids: (computed.append(len(ids)), original(self, m, ids)))
    expected = one_at_a_time(model, processor, QUESTIONS, [None] * len(QUESTIONS), max_new_tokens=6)
    assert continuous_greedy_answers(model, processor, QUESTIONS, None, batch_size=2, max_new_tokens=6) == expected
    header = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                           add_generation_prompt=True).split("x")[0]
    assert computed == [len(processor.tokenizer(header, add_special_tokens=False)["input_ids"])]
