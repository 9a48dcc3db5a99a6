"""The record contract's text fields, read and checked row by row: question, answers, response
(first turn of instruction data); errors say "<source>, <row>, column '<column>'"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

from ..errors import RecordsError
from .layout import Layout

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "bot", "model")
ROLE_KEYS = ("role", "from")
TEXT_KEYS = ("content", "value", "text")


class Locator:
    """Formats "<source>, <row>, column '<column>'" for error messages."""

    def __init__(self, source_name: str, row_labels: Sequence[str], audio_column: str | None = None):
        self.source_name = source_name
        self.row_labels = row_labels
        self.audio_column = audio_column  # the source's name for the contract's "audio" column

    def __call__(self, index: int, column: str) -> str:
        if column == "audio" and self.audio_column:
            column = self.audio_column
        return f"{self.source_name}, {self.row_labels[index]}, column '{column}'"


def text_columns(dataset: datasets.Dataset, layout: Layout, locate: Locator) -> dict[str, list]:
    """The contract's text columns (question, answers, and response when present)."""
    if layout.turns is not None:
        questions, responses = _first_turn_texts(list(dataset[layout.turns]), layout.turns, locate)
    else:
        questions = _question_texts(dataset, layout, locate)
        responses = _optional_texts(dataset, layout.response, locate) if layout.response else None
    answers = _answer_lists(dataset, layout, locate)
    columns = {"question": questions, "answers": answers}
    if responses is not None:
        columns["response"] = responses
    return columns


def _question_texts(dataset: datasets.Dataset, layout: Layout, locate: Locator) -> list[str]:
    """Non-empty question strings; Alpaca's non-empty ``input`` is appended after a blank line."""
    questions = []
    extra_inputs = list(dataset[layout.extra_input]) if layout.extra_input else [None] * len(dataset)
    for index, (value, extra) in enumerate(zip(dataset[layout.question], extra_inputs, strict=True)):
        question = _non_empty_text(value, locate(index, layout.question), "question")
        if isinstance(extra, str) and extra.strip():
            question = f"{question}\n\n{extra.strip()}"
        questions.append(question)
    return questions


def _non_empty_text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise RecordsError(f"{where}: the {what} must be a string, got {type(value).__name__} ({value!r})")
    if not value.strip():
        raise RecordsError(f"{where}: the {what} is empty")
    return value.strip()


def _optional_texts(dataset: datasets.Dataset, column: str, locate: Locator) -> list[str]:
    """Strings of an optional text column; a missing value becomes ""."""
    texts = []
    for index, value in enumerate(dataset[column]):
        if value is not None and not isinstance(value, str):
            raise RecordsError(f"{locate(index, column)}: expected a string, got {type(value).__name__}")
        texts.append((value or "").strip())
    return texts


def _answer_lists(dataset: datasets.Dataset, layout: Layout, locate: Locator) -> list[list[str]]:
    """Gold answers as lists, per row from ``answers`` (a list of str) or else ``answer`` (a str).

    Blank answers are dropped: an empty gold answer would match every prediction.
    """
    no_values = [None] * len(dataset)
    answers_values = list(dataset[layout.answers]) if layout.answers else no_values
    answer_values = list(dataset[layout.answer]) if layout.answer else no_values
    lists = []
    for index, (answers, answer) in enumerate(zip(answers_values, answer_values, strict=True)):
        if answers is not None:
            if not (isinstance(answers, (list, tuple)) and all(isinstance(item, str) for item in answers)):
                raise RecordsError(
                    f"{locate(index, layout.answers)}: expected a list of strings, "
                    f"got {type(answers).__name__} ({answers!r})"
                )
            lists.append(_non_blank(answers))
        elif answer is not None:
            if not isinstance(answer, str):
                got = f"{type(answer).__name__} ({answer!r})"
                raise RecordsError(f"{locate(index, layout.answer)}: expected a string, got {got}")
            lists.append(_non_blank([answer]))
        else:
            lists.append([])
    return lists


def _non_blank(texts: Sequence[str]) -> list[str]:
    return [text.strip() for text in texts if text.strip()]


def _first_turn_texts(conversations: list, column: str, locate: Locator) -> tuple[list[str], list[str]]:
    """The first user text and the first assistant text after it, for every conversation."""
    questions, responses = [], []
    for index, turns in enumerate(conversations):
        where = locate(index, column)
        if not isinstance(turns, (list, tuple)) or not turns:
            raise RecordsError(f"{where}: expected a non-empty list of turns, got {turns!r}")
        roles = [_turn_role(turn, where) for turn in turns]
        user_at = next((i for i, role in enumerate(roles) if role in USER_ROLES), None)
        if user_at is None:
            raise RecordsError(f"{where}: no user turn (roles {USER_ROLES}); roles found: {roles}")
        questions.append(_non_empty_text(_turn_text(turns[user_at], where), where, "first user turn"))
        assistant_at = next((i for i in range(user_at + 1, len(turns)) if roles[i] in ASSISTANT_ROLES), None)
        responses.append("" if assistant_at is None else _turn_text(turns[assistant_at], where).strip())
    return questions, responses


def _turn_field(turn: Any, keys: Sequence[str], what: str, where: str) -> Any:
    """The first non-null of ``keys`` in a turn dict (Arrow structs carry every key, some None)."""
    if not isinstance(turn, dict):
        raise RecordsError(f"{where}: a turn must be a dict with a role and a text, got {turn!r}")
    key = next((key for key in keys if turn.get(key) is not None), None)
    if key is None:
        raise RecordsError(f"{where}: a turn has no {what} (keys {keys}); turn: {turn!r}")
    return turn[key]


def _turn_role(turn: Any, where: str) -> str:
    return str(_turn_field(turn, ROLE_KEYS, "role", where)).lower()


def _turn_text(turn: Any, where: str) -> str:
    """A turn's text: a string, or the text parts of a multimodal content list
    (``[{"type": "audio", ...}, {"type": "text", "text": ...}]``) joined by spaces."""
    content = _turn_field(turn, TEXT_KEYS, "text", where)
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(part for part in parts if isinstance(part, str))
    raise RecordsError(f"{where}: a turn's text must be a string or a list of parts, got {content!r}")


def check_targets_present(texts: dict[str, list], layout: Layout, locate: Locator) -> None:
    """QA rows need a gold answer; instruction rows need a response."""
    if layout.kind == "qa":
        targets, column = texts["answers"], layout.answers or layout.answer
    else:
        targets, column = texts["response"], layout.turns or layout.response
    for index, target in enumerate(targets):
        if not target:
            what = "gold answer" if layout.kind == "qa" else "response"
            raise RecordsError(f"{locate(index, column)}: no {what} (required; pass require_answers=False)")
