"""The seed paper's data sets, streamed: take N first-turn records without downloading a data set.

Schemas, from each data set's public card (checked for issue 35; the fixtures under
``tests/fixtures/paper_data/`` hold exactly these columns and audio encodings):

- ``gpt-omni/VoiceAssistant-400K`` (train, 470 054 rows, parquet under ``data/train-*``):
  ``split_name`` str, ``index`` str, ``round`` str, ``question`` str, ``question_audio`` Audio,
  ``answer`` str, ``answer_snac`` str. One row per round of a conversation: only rows of the first
  round are kept (the paper trains on first turns).
- ``GSQA/spoken-alpaca-gpt4`` (train, 51 349 rows, ``datasets`` arrow shards at the repository root):
  ``instruction``, ``input``, ``output``, ``speech_input``, ``input_speaker``, ``output_speaker``
  (str) and ``input_audio``, ``output_audio`` (Audio). One turn per row. The question's audio is
  ``input_audio``; ``speech_input`` is text (what was read), not audio.
- ``fixie-ai/llama-questions`` (test, 300 rows, parquet): ``question`` str, ``answer`` str,
  ``audio`` Audio.
- ``chiyuanhsiao/spoken-web-questions`` (test, 2 032 rows, parquet): ``url`` str, ``question`` str,
  ``answers`` list[str], ``audio`` Audio (16 kHz), ``question_unit`` list[int].

Streaming (``datasets.load_dataset(..., streaming=True)``) reads only the rows taken. Audio stays
undecoded (``Audio(decode=False)``: ``{"bytes", "path"}``) as everywhere in :mod:`speech_llama.records`.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import RecordsError
from . import normalize_columns

logger = logging.getLogger("speech_llama.records")


class HubUnreachableError(RecordsError):
    """A Hub data set could not be opened or read (no network, no cache, a wrong id)."""


@dataclass(frozen=True)
class PaperSource:
    """One of the paper's data sets: where it lives and how its rows become records.

    Attributes:
        hub_id: the Hub repository (also the name that pins its column layout).
        split: the split the paper uses.
        role: ``train`` (instruction data, first turns) or ``eval`` (QA with gold answers).
        rows: rows in that split per the card (all rounds for VoiceAssistant-400K).
        audio_column: the column holding the question's audio.
        drop_columns: columns never read (e.g. the spoken response), dropped before taking rows.
    """

    hub_id: str
    split: str
    role: str
    rows: int
    audio_column: str
    drop_columns: tuple[str, ...] = ()
    round_column: str | None = None

    @property
    def short_name(self) -> str:
        return self.hub_id.split("/")[-1]


VOICE_ASSISTANT = PaperSource("gpt-omni/VoiceAssistant-400K", "train", "train", 470_054, "question_audio",
                              drop_columns=("answer_snac",), round_column="round")
SPOKEN_ALPACA = PaperSource("GSQA/spoken-alpaca-gpt4", "train", "train", 51_349, "input_audio",
                            drop_columns=("output_audio", "speech_input", "input_speaker", "output_speaker"))
LLAMA_QUESTIONS = PaperSource("fixie-ai/llama-questions", "test", "eval", 300, "audio")
WEB_QUESTIONS = PaperSource("chiyuanhsiao/spoken-web-questions", "test", "eval", 2_032, "audio",
                            drop_columns=("question_unit", "url"))
TRAIN_SOURCES = (VOICE_ASSISTANT, SPOKEN_ALPACA)
EVAL_SOURCES = (LLAMA_QUESTIONS, WEB_QUESTIONS)
PAPER_SOURCES = {source.hub_id: source for source in (*TRAIN_SOURCES, *EVAL_SOURCES)}
# Rows read to find the first round's value of VoiceAssistant-400K ("0" or "1"): the smallest seen.
ROUND_PROBE = 256
# How Arrow stores an undecoded audio value; reading and writing it as this struct needs no audio codec,
# and a cast then types it as `Audio`.
AUDIO_STORAGE = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
ROW_BATCH = 32  # rows per Arrow batch read from the stream (audio included: a few MB)


def paper_source(hub_id: str) -> PaperSource:
    """The :class:`PaperSource` of a Hub id (case-insensitive).

    Raises:
        RecordsError: not one of the paper's data sets.
    """
    for known, source in PAPER_SOURCES.items():
        if known.lower() == hub_id.lower():
            return source
    raise RecordsError(f"{hub_id}: not one of the paper's data sets ({', '.join(PAPER_SOURCES)})")


def stream_records(source: PaperSource, count: int, *, skip: int = 0, location: str | os.PathLike | None = None
                   ) -> datasets.Dataset:
    """Records ``skip`` … ``skip + count − 1`` (first turns only) of ``source`` in the record contract.

    Args:
        source: which data set (its layout and audio column).
        count: records to take (≥ 1); fewer come back only when the split ends first.
        skip: first-turn records to pass over first (held-out sets: the ones after the training ones).
        location: a local folder laid out as the Hub repository (the schema fixtures, a mirror);
            None: the Hub id itself.
    Returns:
        A `datasets.Dataset` with ``question``, ``answers``, ``response`` (instruction data) and
        ``audio`` (``Audio(16 kHz, decode=False)``), checked as :func:`normalize_columns` checks.
    Raises:
        HubUnreachableError: the data set cannot be opened or read (one line, naming it).
        RecordsError: a row does not fit the contract (source, row and column named).
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be a non-negative int, got {skip!r}")
    rows = _open_stream(source, location)
    taken = _read_rows(source, rows, count, skip, location)
    if not taken:
        raise RecordsError(f"{_where(source, location)}: no first-turn rows after skipping {skip}")
    table = _table(taken, source, rows.features)
    records = normalize_columns(table, source.hub_id, require_audio=True, require_answers=True)
    logger.info("%s: took %d records (skipped %d)", source.hub_id, len(records), skip)
    return records


def _where(source: PaperSource, location: str | os.PathLike | None) -> str:
    return source.hub_id if location is None else f"{source.hub_id} (at {location})"


def _open_stream(source: PaperSource, location: str | os.PathLike | None) -> datasets.IterableDataset:
    """The split as an `IterableDataset`, unused columns dropped, audio undecoded."""
    path = source.hub_id if location is None else str(location)
    if location is not None and not Path(location).is_dir():
        raise FileNotFoundError(f"{location}: no such folder (expected a local copy of {source.hub_id})")
    try:
        rows = datasets.load_dataset(path, split=source.split, streaming=True)
    except Exception as error:  # noqa: BLE001 - every failure to open is reported the same way, on one line
        raise _unreachable(source, location, error) from error
    columns = rows.column_names or list((rows.features or {}).keys())
    if source.audio_column not in columns:
        raise RecordsError(f"{_where(source, location)}: no audio column {source.audio_column!r}; columns: {columns}")
    # The audio column as its plain storage struct: datasets encodes and decodes `Audio` values (even with
    # decode=False) only through torchcodec, which this project does not install. Cast before selecting:
    # dropping columns by `remove_columns` maps examples, which would decode them.
    rows = rows.cast_column(source.audio_column, dict(AUDIO_STORAGE))
    return rows.select_columns([name for name in columns if name not in source.drop_columns])


def _iter_rows(rows: datasets.IterableDataset) -> Iterator[dict]:
    """Rows as plain dicts (audio as its ``{"bytes", "path"}`` struct), read in Arrow batches."""
    for table in rows.with_format("arrow").iter(batch_size=ROW_BATCH):
        yield from table.to_pylist()


def _unreachable(source: PaperSource, location: str | os.PathLike | None, error: Exception) -> Exception:
    if isinstance(error, (RecordsError, FileNotFoundError)) and location is not None:
        return error
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    hint = "the Hugging Face Hub cannot be reached or has no such data set" if location is None else "cannot be read"
    return HubUnreachableError(f"{_where(source, location)}: {hint} ({type(error).__name__}: {detail})")


def _read_rows(source: PaperSource, rows: datasets.IterableDataset, count: int, skip: int,
               location: str | os.PathLike | None) -> list[dict]:
    """Materialise the wanted first-turn rows (network errors while reading become one line)."""
    try:
        first_turns = _first_turns(source, rows)
        return list(itertools.islice(first_turns, skip, skip + count))
    except (RecordsError, ValueError):
        raise  # a row that breaks the contract is the data's problem, not the network's
    except Exception as error:  # noqa: BLE001 - a read that fails mid-stream is a Hub failure too
        raise _unreachable(source, location, error) from error


def _first_turns(source: PaperSource, rows: datasets.IterableDataset) -> Iterator[dict]:
    """Every row, or for one-row-per-round data only the rows of the smallest round value.

    The smallest round is read from the first ``ROUND_PROBE`` rows: the card does not say whether
    rounds count from 0 or 1.
    """
    if source.round_column is None:
        return _iter_rows(rows)
    probe = [_round_value(row, source)
             for row in itertools.islice(_iter_rows(rows.select_columns([source.round_column])), ROUND_PROBE)]
    if not probe:
        return iter(())
    first = min(probe)
    return (row for row in _iter_rows(rows) if _round_value(row, source) == first)


def _round_value(row: Mapping, source: PaperSource) -> int:
    value = row[source.round_column]
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        raise RecordsError(f"{source.hub_id}, column {source.round_column!r}: expected a round number, got {value!r}"
                           ) from error


def _table(rows: list[dict], source: PaperSource, features: datasets.Features | None) -> datasets.Dataset:
    """The taken rows as a Dataset with the stream's column types (the audio column as undecoded Audio)."""
    if features is None:
        table = datasets.Dataset.from_list(rows)
    else:
        storage = datasets.Features({name: dict(AUDIO_STORAGE) if name == source.audio_column else feature
                                     for name, feature in features.items()})
        table = datasets.Dataset.from_list(rows, features=storage)
    return table.cast_column(source.audio_column, datasets.Audio(sampling_rate=None, decode=False))


def interleave(parts: list[datasets.Dataset]) -> datasets.Dataset:
    """Rows of several record sets alternated (a0, b0, a1, b1, …; the longer one's rest at the end),
    so any prefix (the importance set: the first 1/30) mixes the sources in proportion."""
    if not parts:
        raise ValueError("nothing to interleave")
    common = [name for name in parts[0].column_names if all(name in part.column_names for part in parts)]
    parts = [part.select_columns(common) for part in parts]
    order = [(index, row) for row in range(max(len(part) for part in parts))
             for index, part in enumerate(parts) if row < len(part)]
    merged = datasets.concatenate_datasets(parts)
    offsets = list(itertools.accumulate([0] + [len(part) for part in parts[:-1]]))
    return merged.select([offsets[index] + row for index, row in order])


__all__ = [
    "EVAL_SOURCES",
    "HubUnreachableError",
    "LLAMA_QUESTIONS",
    "PAPER_SOURCES",
    "PaperSource",
    "SPOKEN_ALPACA",
    "TRAIN_SOURCES",
    "VOICE_ASSISTANT",
    "WEB_QUESTIONS",
    "interleave",
    "paper_source",
    "stream_records",
]
