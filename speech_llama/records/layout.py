"""Where a source keeps the record contract's fields: its :class:`Layout`, detected from the
column names (or pinned by a known Hub id), and which rows are first turns."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from ..errors import RecordsError

logger = logging.getLogger("speech_llama.records")

# Which kind of data each supported Hub id holds. "qa": short gold answers to score against;
# "instruction": one free-form response per question (only the first turn is used).
HUB_DATASET_KINDS = {
    "fixie-ai/llama-questions": "qa",
    "chiyuanhsiao/spoken-web-questions": "qa",
    "gpt-omni/VoiceAssistant-400K": "instruction",
    "GSQA/spoken-alpaca-gpt4": "instruction",
}

# Column names tried in order, for sources whose exact layout is not pinned down.
QUESTION_COLUMNS = ("question", "question_text", "query")
# GSQA/spoken-alpaca-gpt4 keeps its question audio in "input_audio" (its "speech_input" is text).
AUDIO_COLUMNS = ("audio", "question_audio", "input_audio", "speech", "question_speech", "speech_input")
TURNS_COLUMNS = ("conversation", "conversations", "messages")
# Instruction layouts without a turns column: (question column, response column).
INSTRUCTION_PAIRS = (
    ("question", "answer"),
    ("question", "response"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("prompt", "response"),
)


@dataclass(frozen=True)
class Layout:
    """Where the contract's fields live in a source's columns."""

    kind: str  # "qa" or "instruction"
    question: str | None = None  # column holding the question text
    answers: str | None = None  # "answers": a list of str per row
    answer: str | None = None  # "answer": one str per row (used where "answers" is null)
    response: str | None = None  # column holding the response text
    extra_input: str | None = None  # Alpaca's optional "input", appended to the question
    turns: str | None = None  # a list-of-turns column (instruction data)
    audio: str | None = None  # column holding the question audio


def detect_layout(column_names: Sequence[str], source_name: str) -> Layout:
    """Find the layout of a source from its column names; raise listing them if none fits.

    A known Hub id must show its kind's columns and an audio column; any other source may
    be QA or instruction data, with or without audio.
    """
    kind = _hub_kind(source_name)
    qa = _qa_layout(column_names)
    instruction = _instruction_layout(column_names)
    if kind is None and (qa or instruction) is not None:
        return qa or instruction
    layout = {"qa": qa, "instruction": instruction}.get(kind)
    if layout is not None and layout.audio is None:
        # Every supported Hub data set is spoken: no audio column means a changed layout.
        raise RecordsError(
            f"{source_name}: no audio column (tried {AUDIO_COLUMNS}). Columns found: {list(column_names)}"
        )
    if layout is not None:
        return layout
    wanted = {
        "qa": f"a question column {QUESTION_COLUMNS} and 'answer' or 'answers'",
        "instruction": f"a turns column {TURNS_COLUMNS} or a question/response pair {INSTRUCTION_PAIRS}",
        None: "QA columns (question + answer/answers) or instruction columns (turns or question/response)",
    }[kind]
    raise RecordsError(
        f"{source_name}: cannot find the record columns; expected {wanted}. "
        f"Columns found: {list(column_names)}"
    )


def _hub_kind(source_name: str) -> str | None:
    """The kind of a known Hub id (case-insensitive, as Hub ids are), else None."""
    by_lowercase_id = {hub_id.lower(): kind for hub_id, kind in HUB_DATASET_KINDS.items()}
    return by_lowercase_id.get(source_name.lower())


def _first_present(candidates: Sequence[str], column_names: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in column_names), None)


def _qa_layout(column_names: Sequence[str]) -> Layout | None:
    question = _first_present(QUESTION_COLUMNS, column_names)
    answers = "answers" if "answers" in column_names else None
    answer = "answer" if "answer" in column_names else None
    if question is None or (answers is None and answer is None):
        return None
    return Layout(
        kind="qa",
        question=question,
        answers=answers,
        answer=answer,
        response="response" if "response" in column_names else None,
        audio=_first_present(AUDIO_COLUMNS, column_names),
    )


def _instruction_layout(column_names: Sequence[str]) -> Layout | None:
    audio = _first_present(AUDIO_COLUMNS, column_names)
    turns = _first_present(TURNS_COLUMNS, column_names)
    if turns is not None:
        return Layout(kind="instruction", turns=turns, audio=audio)
    for question, response in INSTRUCTION_PAIRS:
        if question in column_names and response in column_names:
            extra_input = "input" if question == "instruction" and "input" in column_names else None
            return Layout(
                kind="instruction", question=question, response=response, extra_input=extra_input, audio=audio
            )
    return None


def select_rows(
    dataset: datasets.Dataset, row_labels: Sequence[str], layout: Layout, max_samples: int | None
) -> tuple[datasets.Dataset, list[str]]:
    """The first-turn rows (see `_first_turn_rows`), cut to the first ``max_samples``,
    with their row labels. Selecting before any column is rewritten keeps large sources cheap."""
    keep = _first_turn_rows(dataset, layout)[:max_samples]
    if len(keep) == len(dataset):
        return dataset, list(row_labels)
    return dataset.select(keep), [row_labels[index] for index in keep]


def _first_turn_rows(dataset: datasets.Dataset, layout: Layout) -> list[int]:
    """Indices of the rows to keep: all, or for one-row-per-round instruction data (a
    ``round`` column, as in VoiceAssistant-400K) only the rows of the first round."""
    all_rows = list(range(len(dataset)))
    if layout.kind != "instruction" or "round" not in dataset.column_names:
        return all_rows
    try:
        rounds = [int(value) for value in dataset["round"]]
    except (TypeError, ValueError):
        warnings.warn("column 'round' is not numeric; keeping every row", stacklevel=3)
        return all_rows
    first_round = min(rounds, default=0)
    kept = [index for index, value in enumerate(rounds) if value == first_round]
    logger.info("kept %d of %d rows (round %d, the first turn)", len(kept), len(rounds), first_round)
    return kept
