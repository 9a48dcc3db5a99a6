"""QA / instruction records: load them from a Hub id, a local `datasets` folder or a JSONL file.

Every source is brought to one contract (see the README, "Contracts"):

- ``question`` (str, never empty)
- ``answers`` (list[str]; the gold answers of QA data, empty for instruction data)
- ``response`` (str; only when the source has responses, e.g. instruction data)
- ``audio`` (only when the source has audio): a ``datasets.Audio(sampling_rate=16000,
  decode=False)`` column, i.e. ``{"path": ..., "bytes": ...}`` values.

Audio is kept undecoded on purpose: `datasets` decodes audio only through ``torchcodec``,
which this project does not install. Consumers turn any audio value into a float32 16 kHz
mono waveform with :func:`speech_llama.audio.read_audio` (soundfile + an exact-ratio polyphase
resampler). When torchcodec is present, ``dataset.cast_column("audio",
datasets.Audio(sampling_rate=16000))`` gives decoded values, and ``read_audio`` accepts those too.

Errors name the source, the row (the 1-based line for JSONL) and the column.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from .audio import SAMPLE_RATE
from .errors import RecordsError
from .files import JsonlError, read_jsonl_numbered

logger = logging.getLogger(__name__)

AUDIO_FEATURE = datasets.Audio(sampling_rate=SAMPLE_RATE, decode=False)
RECORD_FEATURES = {
    "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")),
    "response": datasets.Value("string"),
}

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
AUDIO_COLUMNS = ("audio", "question_audio", "speech", "question_speech", "speech_input")
TURNS_COLUMNS = ("conversation", "conversations", "messages")
# Instruction layouts without a turns column: (question column, response column).
INSTRUCTION_PAIRS = (
    ("question", "answer"),
    ("question", "response"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("prompt", "response"),
)
USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "bot", "model")
ROLE_KEYS = ("role", "from")
TEXT_KEYS = ("content", "value", "text")


# --- public API ----------------------------------------------------------------------------


def load_records(
    source: str | os.PathLike,
    split: str = "test",
    max_samples: int | None = None,
    require_audio: bool = False,
    require_answers: bool = True,
) -> datasets.Dataset:
    """Load QA or instruction records in the contract layout (see the module docstring).

    Args:
        source: a ``.jsonl`` file (audio paths relative to the file's folder), a folder
            written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` from which
            ``split`` is taken), or a Hub dataset id such as ``fixie-ai/llama-questions``.
        split: the split of a ``DatasetDict`` folder or of a Hub dataset.
        max_samples: keep only the first N records (deterministic; no shuffling).
        require_audio: every record must have audio.
        require_answers: every record must have a target: a non-empty ``answers`` list for
            QA data, a non-empty ``response`` for instruction data.

    Raises:
        RecordsError (a ValueError) naming the source, row and column of the first problem.
        FileNotFoundError when ``source`` is neither an existing path nor a Hub id.
    """
    _check_max_samples(max_samples)
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        dataset, row_labels = _read_jsonl(path, max_samples)
        source_name, base_dir = str(path), path.parent.resolve()
    elif path.is_dir():
        dataset, row_labels = _load_saved_dataset(path, split), None
        source_name, base_dir = str(path), path.resolve()
    elif path.exists():
        raise RecordsError(f"{path}: unsupported file type; expected a .jsonl file or a save_to_disk folder")
    elif _looks_like_hub_id(str(source)):
        dataset, row_labels = _load_hub_split(str(source), split), None
        source_name, base_dir = str(source), None
    else:
        raise FileNotFoundError(f"{source}: no such file or folder, and not a Hub dataset id (owner/name)")
    if len(dataset) == 0:
        raise RecordsError(f"{source_name}: no records")
    return normalize_columns(
        dataset,
        source_name,
        max_samples=max_samples,
        require_audio=require_audio,
        require_answers=require_answers,
        base_dir=base_dir,
        row_labels=row_labels,
    )


def normalize_columns(
    dataset: datasets.Dataset,
    source_name: str,
    *,
    max_samples: int | None = None,
    require_audio: bool = False,
    require_answers: bool = False,
    base_dir: str | os.PathLike | None = None,
    row_labels: Sequence[str] | None = None,
) -> datasets.Dataset:
    """Map a dataset's columns onto the record contract and check every value.

    ``source_name`` picks the layout for the known Hub ids (:data:`HUB_DATASET_KINDS`);
    any other source is detected: QA when it has a question and an ``answer``/``answers``
    column, else instruction data (a turns column, or a question/response pair such as
    ``instruction``/``output``). Instruction data keeps the first turn only.

    ``max_samples``, ``require_audio`` and ``require_answers`` are as in :func:`load_records`
    (``require_answers`` defaults to False here: a pure column mapping). ``base_dir`` is where
    relative audio paths are resolved and audio files checked (local sources only);
    ``row_labels`` names rows in errors (``"line 7"`` for JSONL; default ``"row N"``).
    """
    _check_max_samples(max_samples)
    layout = detect_layout(dataset.column_names, source_name)
    if row_labels is None:
        row_labels = [f"row {index + 1}" for index in range(len(dataset))]
    dataset, row_labels = _select_rows(dataset, row_labels, layout, max_samples)
    locate = _Locator(source_name, row_labels)

    texts = _text_columns(dataset, layout, locate)
    if require_answers:
        _check_targets_present(texts, layout, locate)
    records = datasets.Dataset.from_dict(
        texts, features=datasets.Features({name: RECORD_FEATURES[name] for name in texts})
    )
    if layout.audio is None:
        if require_audio:
            raise RecordsError(
                f"{source_name}: audio is required but there is no audio column (tried {AUDIO_COLUMNS}). "
                f"Columns found: {dataset.column_names}"
            )
        return records
    audio = _audio_column(dataset, layout.audio, locate, base_dir)
    if require_audio:
        _check_audio_present(audio, layout.audio, locate)
    return datasets.concatenate_datasets([records, audio], axis=1)


# --- layout detection ----------------------------------------------------------------------


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


def _select_rows(
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


# --- text fields ---------------------------------------------------------------------------


class _Locator:
    """Formats "<source>, <row>, column '<column>'" for error messages."""

    def __init__(self, source_name: str, row_labels: Sequence[str]):
        self.source_name = source_name
        self.row_labels = row_labels

    def __call__(self, index: int, column: str) -> str:
        return f"{self.source_name}, {self.row_labels[index]}, column '{column}'"


def _text_columns(dataset: datasets.Dataset, layout: Layout, locate: _Locator) -> dict[str, list]:
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


def _question_texts(dataset: datasets.Dataset, layout: Layout, locate: _Locator) -> list[str]:
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


def _optional_texts(dataset: datasets.Dataset, column: str, locate: _Locator) -> list[str]:
    """Strings of an optional text column; a missing value becomes ""."""
    texts = []
    for index, value in enumerate(dataset[column]):
        if value is not None and not isinstance(value, str):
            raise RecordsError(f"{locate(index, column)}: expected a string, got {type(value).__name__}")
        texts.append((value or "").strip())
    return texts


def _answer_lists(dataset: datasets.Dataset, layout: Layout, locate: _Locator) -> list[list[str]]:
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


def _first_turn_texts(conversations: list, column: str, locate: _Locator) -> tuple[list[str], list[str]]:
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


# --- audio column --------------------------------------------------------------------------


def _audio_column(
    dataset: datasets.Dataset, column: str, locate: _Locator, base_dir: str | os.PathLike | None
) -> datasets.Dataset:
    """A one-column dataset ``audio`` typed ``Audio(16 kHz, decode=False)`` (or, for
    in-table ``{"array", "sampling_rate"}`` structs, those structs as they are)."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "null"):
        paths = _resolved_audio_paths(list(dataset[column]), column, locate, base_dir)
        return datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", AUDIO_FEATURE)
    audio = dataset.select_columns([column])
    if column != "audio":
        audio = audio.rename_column(column, "audio")
    if isinstance(feature, dict) and {"array", "sampling_rate"} <= set(feature):
        return audio
    if isinstance(feature, datasets.Audio) or (
        isinstance(feature, dict) and {"path", "bytes"} & set(feature)
    ):
        audio = audio.cast_column("audio", AUDIO_FEATURE)
        if base_dir is not None:
            _check_stored_audio_files(audio, column, locate)
        return audio
    raise RecordsError(
        f"{locate(0, column)}: the column holds {feature}, not audio "
        "(expected datasets.Audio, a path string, or an {'array', 'sampling_rate'} struct)"
    )


def _resolved_audio_paths(
    values: list, column: str, locate: _Locator, base_dir: str | os.PathLike | None
) -> list[str | None]:
    """Absolute paths (relative ones resolved against ``base_dir``), each checked to exist.

    Hub sources (``base_dir`` None) keep their strings as they are: they may be URLs.
    """
    paths = []
    for index, value in enumerate(values):
        if value is None or value == "":
            paths.append(None)
            continue
        if base_dir is None:
            paths.append(value)
            continue
        path = Path(value)
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise RecordsError(f"{locate(index, column)}: audio file not found: {path}")
        paths.append(str(path.resolve()))
    return paths


def _check_stored_audio_files(audio: datasets.Dataset, column: str, locate: _Locator) -> None:
    """For local sources, every audio value stored as a bare path must point to a file.

    Reads only the ``path`` field and the null mask of ``bytes`` through Arrow, so embedded
    audio bytes are never copied into Python.
    """
    storage = _arrow_column(audio, "audio")
    has_bytes = pc.invert(pc.is_null(pc.struct_field(storage, "bytes"))).to_pylist()
    paths = pc.struct_field(storage, "path").to_pylist()
    for index, (embedded, path) in enumerate(zip(has_bytes, paths, strict=True)):
        if not embedded and path is not None and not os.path.isfile(path):
            raise RecordsError(f"{locate(index, column)}: audio file not found: {path}")


def _arrow_column(dataset: datasets.Dataset, column: str) -> pa.Array:
    """One column as a single Arrow array, honouring any row selection on ``dataset``."""
    table = dataset.with_format("arrow")[:]
    return table.column(column).combine_chunks()


# --- presence checks -----------------------------------------------------------------------


def _check_targets_present(texts: dict[str, list], layout: Layout, locate: _Locator) -> None:
    """QA rows need a gold answer; instruction rows need a response."""
    if layout.kind == "qa":
        targets, column = texts["answers"], layout.answers or layout.answer
    else:
        targets, column = texts["response"], layout.turns or layout.response
    for index, target in enumerate(targets):
        if not target:
            what = "gold answer" if layout.kind == "qa" else "response"
            raise RecordsError(f"{locate(index, column)}: no {what} (required; pass require_answers=False)")


def _check_audio_present(audio: datasets.Dataset, column: str, locate: _Locator) -> None:
    missing = pc.is_null(_arrow_column(audio, "audio")).to_pylist()
    if True in missing:
        raise RecordsError(f"{locate(missing.index(True), column)}: audio is required but missing")


# --- sources -------------------------------------------------------------------------------


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")


def _looks_like_hub_id(source: str) -> bool:
    """``owner/name`` that cannot be a local path (a mistyped local path must not reach the Hub)."""
    parts = source.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not source.startswith((".", "~"))
        and not source.endswith((".jsonl", ".json"))
        and not Path(parts[0]).exists()
    )


def _read_jsonl(path: Path, max_samples: int | None) -> tuple[datasets.Dataset, list[str]]:
    """Parse a JSONL file (blank lines skipped) into a dataset plus a "line N" label per row."""
    try:
        rows = read_jsonl_numbered(path, limit=max_samples)
    except JsonlError as error:
        raise RecordsError(str(error)) from error
    records = [record for _, record in rows]
    labels = [f"line {line_number}" for line_number, _ in rows]
    return _dataset_from_records(records, labels, str(path)), labels


def _dataset_from_records(records: list[dict], labels: list[str], source_name: str) -> datasets.Dataset:
    """Build a dataset from the union of the records' keys (a key absent from a record is None).

    Arrow needs one type per column, so a value whose JSON type differs from the column's
    first value is reported with its line, instead of as a bare Arrow error.
    """
    keys = dict.fromkeys(key for record in records for key in record)  # ordered union
    columns = {key: [record.get(key) for record in records] for key in keys}
    for column, values in columns.items():
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise RecordsError(_type_conflict_message(values, column, labels, source_name, error)) from error
    return datasets.Dataset.from_dict(columns)


def _type_conflict_message(
    values: list, column: str, labels: list[str], source_name: str, error: Exception
) -> str:
    first_type = next(type(value) for value in values if value is not None)
    for label, value in zip(labels, values, strict=True):
        if value is not None and type(value) is not first_type:
            return (
                f"{source_name}, {label}, column '{column}': got {type(value).__name__} ({value!r}) "
                f"where earlier lines have {first_type.__name__}"
            )
    return f"{source_name}, column '{column}': values of mixed types ({error})"


def _load_saved_dataset(path: Path, split: str) -> datasets.Dataset:
    """A ``save_to_disk`` folder: a Dataset as is, or ``split`` of a DatasetDict."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise RecordsError(f"{path}: not a folder written by datasets' save_to_disk ({error})") from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise RecordsError(f"{path}: no split {split!r}; available splits: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _load_hub_split(dataset_id: str, split: str) -> datasets.Dataset:
    """One split of a Hub dataset (needs the network or a populated HF cache)."""
    logger.info("loading %s split %s from the Hugging Face Hub", dataset_id, split)
    return datasets.load_dataset(dataset_id, split=split)


__all__ = [
    "AUDIO_FEATURE",
    "HUB_DATASET_KINDS",
    "Layout",
    "RecordsError",
    "detect_layout",
    "load_records",
    "normalize_columns",
]
