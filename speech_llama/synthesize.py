"""Turn text QA / instruction records into spoken ones with Piper TTS, offline.

``synthesize_records`` reads records (a local ``.jsonl`` or a list of dicts), speaks the text
field of each with a Piper voice shipped in a pip wheel, and writes::

    out_dir/audio/{index:06d}-{sha1(text)[:10]}.wav   16 kHz mono PCM16, one per record
    out_dir/data.jsonl                                 every input field + "audio" (relative path)

Runs are resumable: each wav is written to a temporary file and renamed into place, so a wav
that exists is complete and is never synthesised again; ``data.jsonl`` is written (atomically)
only at the end and can always be re-derived by running again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_llama.audio import SAMPLE_RATE, read_wav, write_wav
from speech_llama.files import JsonlError, atomic_write_text, read_jsonl_numbered
from speech_llama.tts import DEFAULT_VOICE, check_engine, speak_many, training_voices, voice_named

DATA_FILE_NAME = "data.jsonl"
AUDIO_DIR_NAME = "audio"
AUDIO_FIELD = "audio"
# An input record's own "audio" value is kept under this name rather than overwritten.
ORIGINAL_AUDIO_FIELD = "original_audio"

# Every training voice of the corpus in turn, record by record (the held-out speaker never speaks).
TRAINING_MIX = "training-mix"


def voice_for_record(voice: str, index: int) -> str:
    """The voice that speaks record `index`: `voice` itself, or the index-th training voice for `TRAINING_MIX`."""
    if voice != TRAINING_MIX:
        return voice
    voices = training_voices()
    return voices[index % len(voices)].name


def check_voice(voice: str) -> None:
    """Fail before any synthesis when a voice's engine, Festival voice or Piper model is missing."""
    for name in [v.name for v in training_voices()] if voice == TRAINING_MIX else [voice]:
        check_engine(voice_named(name))


def synthesize_text(text: str, voice: str = DEFAULT_VOICE) -> np.ndarray:
    """Speak ``text``: float32 mono waveform at 16 kHz in [-1, 1], shape (n_samples,).

    Raises:
        ValueError: empty text, or text the engine turns into no audio at all.
    """
    if not text or not text.strip():
        raise ValueError("synthesize_text: text is empty")
    return speak_many(voice_named(voice), [text])[0]


# Texts one engine process speaks in one go (Festival's start-up is ~80 % of one utterance's cost).
SYNTHESIS_CHUNK = 16


def synthesize_texts(texts: list[str], voice: str = DEFAULT_VOICE) -> list[np.ndarray]:
    """Speak each text like `synthesize_text`; a Festival / Flite / eSpeak voice speaks the whole list in one go."""
    if voice_named(voice).engine == "piper":
        return [synthesize_text(text, voice) for text in texts]
    return speak_many(voice_named(voice), texts)


# --------------------------------------------------------------------------------------------
# Records in, records out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRecord:
    """One input record and where it came from (``file:line`` or ``records[i]``) for errors."""

    where: str
    fields: dict


def read_jsonl_records(path: Path) -> list[SourceRecord]:
    """Every non-blank line of a JSONL file as a JSON object.

    Raises:
        ValueError: unreadable JSON or a line that is not an object, naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input records file {path} does not exist")
    try:
        rows = read_jsonl_numbered(path)
    except JsonlError as error:
        problem = error.problem
        if error.cause is not None:
            problem = f"malformed JSON: {error.cause.msg} (column {error.cause.colno})"
        raise ValueError(f"{path}:{error.line}: {problem}") from None
    return [SourceRecord(f"{path}:{line_number}", fields) for line_number, fields in rows]


def as_source_records(records: str | Path | Sequence[dict]) -> list[SourceRecord]:
    """Normalise the accepted inputs (a ``.jsonl`` path or a list of dicts)."""
    if isinstance(records, (str, Path)):
        if Path(records).suffix != ".jsonl":
            raise ValueError(f"{records}: expected a local .jsonl file of records")
        return read_jsonl_records(Path(records))
    source = []
    for index, fields in enumerate(records):
        if not isinstance(fields, dict):
            raise ValueError(f"records[{index}]: expected a dict, got {type(fields).__name__}")
        source.append(SourceRecord(f"records[{index}]", dict(fields)))
    return source


def record_text(record: SourceRecord, text_field: str) -> str:
    """The text to speak; clear error if the field is missing, not a string, or empty."""
    if text_field not in record.fields:
        raise ValueError(
            f"{record.where}: record has no {text_field!r} field (fields: {sorted(record.fields)})"
        )
    text = record.fields[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{record.where}: field {text_field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{record.where}: field {text_field!r} is empty")
    return text


def audio_relative_path(index: int, text: str) -> str:
    """Deterministic wav name, relative to the output folder (POSIX separators).

    The index keeps files in input order; the text hash means an edited record gets a new
    file instead of silently reusing speech for the old text.
    """
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{AUDIO_DIR_NAME}/{index:06d}-{digest}.wav"


def spoken_record(record: SourceRecord, audio_path: str) -> dict:
    """Output record: every input field, plus ``audio`` (an input ``audio`` moves aside)."""
    fields = dict(record.fields)
    if AUDIO_FIELD in fields and fields[AUDIO_FIELD] != audio_path:
        fields[ORIGINAL_AUDIO_FIELD] = fields.pop(AUDIO_FIELD)
    fields[AUDIO_FIELD] = audio_path
    return fields


def json_line(fields: dict, where: str) -> str:
    """One JSONL line; error naming the record if a value cannot be written as JSON."""
    try:
        return json.dumps(fields, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: record cannot be written as JSON: {error}") from None


@dataclass(frozen=True)
class PlannedRecord:
    """A validated record with its text and target wav (relative to the output folder)."""

    text: str
    audio_path: str
    line: str
    voice: str


def voice_chunks(items: list[PlannedRecord]) -> list[list[PlannedRecord]]:
    """Items grouped by voice (in order of first appearance), cut into chunks one engine process
    speaks: `SYNTHESIS_CHUNK` texts for a corpus engine, one for Piper (in-process: a chunk would only
    delay its wavs)."""
    by_voice: dict[str, list[PlannedRecord]] = {}
    for item in items:
        by_voice.setdefault(item.voice, []).append(item)
    chunks = []
    for voice, group in by_voice.items():
        size = 1 if voice_named(voice).engine == "piper" else SYNTHESIS_CHUNK
        chunks += [group[start : start + size] for start in range(0, len(group), size)]
    return chunks


def plan_records(sources: Iterable[SourceRecord], text_field: str, voice: str = DEFAULT_VOICE) -> list[PlannedRecord]:
    """Validate every record up front, so bad input fails before any slow synthesis."""
    planned = []
    for index, record in enumerate(sources):
        text = record_text(record, text_field)
        audio_path = audio_relative_path(index, text)
        line = json_line(spoken_record(record, audio_path), record.where)
        planned.append(PlannedRecord(text, audio_path, line, voice_for_record(voice, index)))
    return planned


def synthesize_records(
    records_path_or_list: str | Path | Sequence[dict],
    out_dir: str | Path,
    voice: str = DEFAULT_VOICE,
    text_field: str = "question",
    progress: bool = True,
    workers: int = 2,
) -> Path:
    """Speak the ``text_field`` of every record into 16 kHz wavs; write ``out_dir/data.jsonl``.

    Args:
        records_path_or_list: a local ``.jsonl`` file (one JSON object per line) or a list of
            dicts, e.g. ``{"question": ..., "answer"|"answers": ..., "response"?: ...}``.
        out_dir: output folder (created). Existing wavs from an earlier run are kept as they
            are; only missing ones are synthesised.
        voice: a voice of ``speech_llama.tts.voice_names()`` (Piper model or corpus voice) or
            ``TRAINING_MIX`` (record i spoken by the i-th training voice, in turn).
        text_field: which field to speak.
        progress: show a tqdm bar.
        workers: engine processes speaking at once (`voice_chunks`; Piper runs one call at a time).

    Returns:
        Path of ``out_dir/data.jsonl``: input records in order, all fields kept, plus
        ``"audio"``: wav path relative to ``out_dir``.

    Raises:
        ValueError: malformed JSONL or a record without usable text (names file:line or
            records[i]); unknown voice.
        OfflineWeightsMissingError: Piper or the voice is not installed.
    """
    from tqdm.auto import tqdm

    planned = plan_records(as_source_records(records_path_or_list), text_field, voice)
    out_dir = Path(out_dir)
    (out_dir / AUDIO_DIR_NAME).mkdir(parents=True, exist_ok=True)
    missing = [item for item in planned if not (out_dir / item.audio_path).is_file()]
    if missing:  # load (and fail on a missing voice or engine) before the bar starts
        check_voice(voice)
    chunks = voice_chunks(missing)
    engines = any(voice_named(chunk[0].voice).engine != "piper" for chunk in chunks)  # Piper alone gains nothing from threads
    pool = ThreadPoolExecutor(max(1, workers) if engines else 1)
    try:
        with tqdm(total=len(planned), initial=len(planned) - len(missing), desc="synthesize", unit="record",
                  disable=not progress) as bar:
            spoken = pool.map(lambda chunk: synthesize_texts([item.text for item in chunk], chunk[0].voice), chunks)
            for chunk, clips in zip(chunks, spoken):  # in order: every wav of a finished chunk is on disk
                for item, clip in zip(chunk, clips):
                    write_wav(out_dir / item.audio_path, clip)
                bar.update(len(chunk))
    finally:  # on an error or Ctrl-C, chunks not yet started are dropped, not spoken into nothing
        pool.shutdown(wait=True, cancel_futures=True)
    data_path = out_dir / DATA_FILE_NAME
    atomic_write_text(data_path, "".join(item.line + "\n" for item in planned))
    return data_path


# --------------------------------------------------------------------------------------------
# Reading the result back as a datasets.Dataset
# --------------------------------------------------------------------------------------------


def torchcodec_available() -> bool:
    """datasets ≥ 4 decodes ``Audio`` only through torchcodec (not installed by default)."""
    return importlib.util.find_spec("torchcodec") is not None


def rows_with_all_fields(rows: list[dict]) -> list[dict]:
    """Give every row every field (None where absent), in first-seen order.

    ``Dataset.from_list`` takes its columns from the first row only, so fields that appear
    later (``answers`` after a row with ``answer``) would silently vanish.
    """
    fields = list(dict.fromkeys(name for row in rows for name in row))
    return [{name: row.get(name) for name in fields} for row in rows]


def _decode_audio_with_soundfile(batch: dict) -> dict:
    """``set_transform`` hook: Audio(decode=False) values → {"path", "array", "sampling_rate"}
    dicts, the same keys datasets' own decoder answers to."""
    batch[AUDIO_FIELD] = [
        {"path": value["path"], "array": read_wav(value["path"]), "sampling_rate": SAMPLE_RATE}
        for value in batch[AUDIO_FIELD]
    ]
    return batch


def load_spoken_dataset(out_dir: str | Path, decode: bool | None = None):
    """``out_dir/data.jsonl`` as a ``datasets.Dataset`` with an ``Audio(sampling_rate=16000)``
    column ``audio`` (absolute paths).

    ``row["audio"]["array"]`` is float32 audio of shape (n,) at 16 kHz and
    ``row["audio"]["sampling_rate"] == 16000`` either way:

    Args:
        decode: True: datasets decodes (needs ``torchcodec``; error if missing). False: raw
            ``{"path", "bytes"}`` values. None (default): datasets decodes when torchcodec is
            installed; otherwise the column is ``Audio(decode=False)`` and a
            ``set_transform`` reads the wavs with soundfile (a transform is dropped by
            ``map``/``with_format``; read with ``speech_llama.audio.read_wav`` there).
    """
    from datasets import Audio, Dataset
    from pyarrow import ArrowException

    out_dir = Path(out_dir)
    data_path = out_dir / DATA_FILE_NAME
    rows = [record.fields for record in read_jsonl_records(data_path)]
    for row_number, row in enumerate(rows, start=1):
        if not isinstance(row.get(AUDIO_FIELD), str):
            raise ValueError(f"{data_path}:{row_number}: no {AUDIO_FIELD!r} path in the record")
        row[AUDIO_FIELD] = str((out_dir / row[AUDIO_FIELD]).resolve())
    if decode and not torchcodec_available():
        raise ImportError(
            "datasets needs torchcodec to decode Audio: pip install torchcodec (plus FFmpeg),"
            " or call load_spoken_dataset(..., decode=None) to read wavs with soundfile"
        )
    use_datasets_decoder = torchcodec_available() if decode is None else decode
    try:
        dataset = Dataset.from_list(rows_with_all_fields(rows))
    except (TypeError, ValueError, ArrowException) as error:
        raise ValueError(f"{data_path}: records cannot form one table: {error}") from None
    dataset = dataset.cast_column(
        AUDIO_FIELD, Audio(sampling_rate=SAMPLE_RATE, decode=use_datasets_decoder)
    )
    if decode is None and not use_datasets_decoder:
        dataset.set_transform(_decode_audio_with_soundfile, columns=[AUDIO_FIELD], output_all_columns=True)
    return dataset
