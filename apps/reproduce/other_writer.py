"""Training responses the base LLM did not write: the English part of `chatterbot-corpus`.

The seed paper's models learn another writer's responses from speech (LLaMA-Omni's InstructS2S
answers were written by a larger model); self-distilled targets cannot show what that costs. The
`chatterbot-corpus` wheel (PyPI, BSD-3-Clause, "all training data contained within this corpus is
user contributed") ships short English conversations as YAML: each conversation is a list of
turns, and every two consecutive turns make one (question, response) pair.

What is kept: English files only; pairs whose turns are both text; no response with a code block
(a spoken assistant does not read code aloud, and the training rows would be cut mid-block); the
first response to each question (by its normalised words); and no pair that touches a held-out QA
question — the same question, nearly the same question (half its content words or more), or a
held-out gold answer in the pair's text next to a content word of that held-out question (e.g.
"Canberra is the capital city of which country?" → "Australia" against "What is the capital of
Australia?" → "Canberra"). Every drop is counted in `OtherWriterData.dropped`.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from speech_llama.text import normalized

CORPUS_PACKAGE = "chatterbot_corpus"
CORPUS_LICENCE = "BSD-3-Clause (chatterbot-corpus 1.3.3, user-contributed conversations)"
LANGUAGE = "english"
CODE_FENCE = "```"
# Question-word and function words: they say nothing about what a question is about.
STOP_WORDS = frozenset(
    "a an and are as at be by can could did do does for from has have how i in is it its me my of on or "
    "the this that to was were what when where which who whom whose why will with you your".split()
)
NEAR_DUPLICATE = 0.5  # content-word Jaccard of two questions from which they count as the same question
# Typographic characters the TTS engines read differently from their ASCII forms.
ASCII_FORMS = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...", "\xa0": " "})


class OtherWriterError(ValueError):
    """The other-writer corpus is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class OtherWriterPair:
    question: str
    response: str
    category: str  # the YAML file's stem (trivia, science, emotion, …)


@dataclass
class OtherWriterData:
    """The usable pairs in file order, and how many were dropped for each reason."""

    pairs: list[OtherWriterPair]
    dropped: Counter = field(default_factory=Counter)
    source: str = ""

    def summary(self) -> dict:
        return {"source": self.source, "licence": CORPUS_LICENCE, "usable": len(self.pairs),
                "dropped": dict(sorted(self.dropped.items())),
                "categories": dict(sorted(Counter(pair.category for pair in self.pairs).items()))}


def corpus_folder() -> Path:
    """The installed corpus's English folder (the `offline` extra installs `chatterbot-corpus`)."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OtherWriterError("the other-writer responses need the chatterbot-corpus package: "
                               "pip install chatterbot-corpus==1.3.3 (part of the project's `offline` extra)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / LANGUAGE
    if not folder.is_dir():
        raise OtherWriterError(f"{folder}: no English conversations in the installed chatterbot-corpus")
    return folder


def clean(text: str) -> str:
    """One line of plain text: ASCII quotes and dashes, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text.translate(ASCII_FORMS)).split())


def read_pairs(folder: Path) -> tuple[list[OtherWriterPair], Counter]:
    """Every (turn, next turn) pair of every English file, in file order, and what was skipped."""
    pairs, skipped = [], Counter()
    for path in sorted(folder.glob("*.yml")):
        try:
            conversations = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []
        except yaml.YAMLError as error:
            raise OtherWriterError(f"{path}: not valid YAML ({error})") from error
        for conversation in conversations:
            if not isinstance(conversation, list) or len(conversation) < 2 or not all(isinstance(t, str) for t in conversation):
                skipped["malformed conversation"] += 1  # e.g. trivia.yml's bingo entry, flattened into one string
                continue
            for question, response in zip(conversation, conversation[1:]):
                pairs.append(OtherWriterPair(question, response, path.stem))
    return pairs, skipped


def content_words(text: str) -> set[str]:
    return {word for word in normalized(text).split() if word not in STOP_WORDS and len(word) > 2}


@dataclass(frozen=True)
class HeldOutQuestion:
    """What the overlap rules read of one held-out record, normalised once."""

    key: str
    words: frozenset[str]
    answers: tuple[str, ...]


def held_out_questions(held_out: list[dict]) -> list[HeldOutQuestion]:
    # One-letter answers ("A") are in every sentence; they say nothing about a leak.
    return [HeldOutQuestion(normalized(record["question"]), frozenset(content_words(record["question"])),
                            tuple(answer for answer in map(normalized, record.get("answers") or [record.get("answer", "")])
                                  if len(answer) > 1))
            for record in held_out]


def overlaps_any(pair: OtherWriterPair, questions: list[HeldOutQuestion]) -> bool:
    """Whether the pair repeats, nearly repeats, or answers around one of the held-out questions."""
    question_key, question_words = normalized(pair.question), content_words(pair.question)
    pair_text = f" {normalized(pair.question + ' ' + pair.response)} "
    for question in questions:
        if question_key == question.key:
            return True
        shared = question_words & question.words
        if shared and len(shared) / len(question_words | question.words) >= NEAR_DUPLICATE:
            return True
        if shared and any(f" {answer} " in pair_text for answer in question.answers):
            return True
    return False


def held_out_overlap(pair: OtherWriterPair, held_out: list[dict]) -> bool:
    """Whether the pair repeats, nearly repeats, or answers around a held-out question (module docstring)."""
    return overlaps_any(pair, held_out_questions(held_out))


def usable_pairs(held_out: list[dict], folder: Path | None = None) -> OtherWriterData:
    """The pairs a reproduction may train on: cleaned, filtered and de-duplicated (module docstring)."""
    folder = folder or corpus_folder()
    raw, dropped = read_pairs(folder)
    questions = held_out_questions(held_out)
    seen: set[str] = set()
    kept = []
    for pair in raw:
        pair = OtherWriterPair(clean(pair.question), clean(pair.response), pair.category)
        key = normalized(pair.question)
        if not key or not pair.response:  # a response may be digits alone ("1963")
            dropped["empty turn"] += 1
        elif CODE_FENCE in pair.response:
            dropped["code in the response"] += 1
        elif key in seen:
            dropped["question seen before"] += 1
        elif overlaps_any(pair, questions):
            dropped["overlaps a held-out QA question"] += 1
        else:
            seen.add(key)
            kept.append(pair)
    return OtherWriterData(kept, dropped, source=str(folder))


__all__ = ["CORPUS_LICENCE", "OtherWriterData", "OtherWriterError", "OtherWriterPair", "clean", "corpus_folder",
           "held_out_overlap", "read_pairs", "usable_pairs"]
