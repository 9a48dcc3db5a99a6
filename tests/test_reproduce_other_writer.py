"""The other writer's responses (apps/reproduce/other_writer.py) and the splits drawn from them."""

from __future__ import annotations

import dataclasses

import pytest

from alignment.corpus import held_out_records
from speech_llama.text import normalized

from apps.reproduce import EXPERIMENT_PRESETS
from apps.reproduce.other_writer import OtherWriterError, corpus_folder, held_out_overlap, usable_pairs, OtherWriterPair
from apps.reproduce.splits import other_writer_splits

HELD_OUT = [{"question": "What is the capital of Australia?", "answers": ["Canberra"]},
            {"question": "Who wrote The Hobbit?", "answers": ["J.R.R. Tolkien", "Tolkien"]},
            {"question": "What is the first letter of the English alphabet?", "answers": ["A"]}]

CORPUS = """categories:
- trivia
conversations:
- - Canberra is the capital city of which country?
  - Australia
- - who wrote the hobbit
  - The Hobbit was written by J.R.R. Tolkein.
- - Who wrote the Hobbit, the novel?
  - Tolkien did.
- - What was the name of the first artificial Earth satellite?
  - Sputnik 1
- - What year was President John F. Kennedy assassinated?
  - '1963'
- - can you write bubble sort?
  - "Here it is:\\n```\\ndef sort(a): return sorted(a)\\n```"
- In a game of bingo, which number is two little ducks? - '22'
- - What’s the “rarest” M&M color?
  - Brown
  - Are you sure?
  - Quite sure.
- - What was the name of the first artificial Earth satellite?
  - Vostok
"""


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "trivia.yml").write_text(CORPUS, encoding="utf-8")
    return tmp_path


def test_pairs_are_consecutive_turns_cleaned_and_filtered(corpus):
    data = usable_pairs(HELD_OUT, corpus)
    assert [(pair.question, pair.response) for pair in data.pairs] == [
        ("What was the name of the first artificial Earth satellite?", "Sputnik 1"),
        ("What year was President John F. Kennedy assassinated?", "1963"),  # digits alone are a response
        ("What's the \"rarest\" M&M color?", "Brown"),  # typographic quotes made ASCII (the TTS reads them)
        ("Brown", "Are you sure?"),
        ("Are you sure?", "Quite sure."),
    ]
    assert dict(data.dropped) == {"malformed conversation": 1, "code in the response": 1, "question seen before": 1,
                                  "overlaps a held-out QA question": 3}
    assert data.summary()["usable"] == 5 and data.summary()["categories"] == {"trivia": 5}


def test_overlap_catches_the_same_a_near_and_an_answered_question():
    pair = lambda question, response="x": OtherWriterPair(question, response, "trivia")
    assert held_out_overlap(pair("who wrote the hobbit"), HELD_OUT)  # the same words
    assert held_out_overlap(pair("Who wrote the Hobbit, the novel?"), HELD_OUT)  # most content words shared
    assert held_out_overlap(pair("Canberra is the capital city of which country?", "Australia"), HELD_OUT)  # its answer, inside
    assert not held_out_overlap(pair("What is the capital of France?", "Paris"), HELD_OUT)
    # A one-letter answer is in every sentence: not a leak on its own.
    assert not held_out_overlap(pair("Who was the first woman to win a Nobel Prize?", "Marie Curie"), HELD_OUT)


def test_the_installed_corpus_gives_enough_pairs_and_none_of_the_held_out_questions():
    data = usable_pairs(held_out_records())
    assert len(data.pairs) >= 800 and data.summary()["licence"].startswith("BSD-3-Clause")
    held = {normalized(record["question"]) for record in held_out_records()}
    assert not {normalized(pair.question) for pair in data.pairs} & held
    assert not any("```" in pair.response for pair in data.pairs)
    assert corpus_folder().name == "english" and {"trivia", "science", "emotion"} <= set(data.summary()["categories"])


def test_a_missing_corpus_names_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OtherWriterError, match="pip install chatterbot-corpus==1.3.3"):
        corpus_folder()


def test_splits_are_disjoint_prefixes_and_refuse_more_than_the_corpus_has():
    preset = EXPERIMENT_PRESETS["cpu-mini"]
    splits = other_writer_splits(preset)
    questions = {name: [row["question"] for row in rows] for name, rows in splits.items()}
    assert len(questions["train"]) == preset.train_records and len(questions["dev"]) == preset.dev_records
    assert questions["align"][: preset.train_records] == questions["train"]
    assert not set(questions["dev"]) & set(questions["align"])
    assert other_writer_splits(preset) == splits  # seeded
    with pytest.raises(ValueError, match="usable other-writer pairs"):
        other_writer_splits(dataclasses.replace(preset, train_records=5000))
