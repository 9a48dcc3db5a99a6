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

import argparse
import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_llama.audio import SAMPLE_RATE, read_wav, resample, write_wav
from speech_llama.files import JsonlError, atomic_write_text, read_jsonl_numbered
from speech_llama.corpus.voices import VOICES as ENGINE_VOICES
from speech_llama.corpus.voices import check_engine, speak, speak_many, training_voices, voice_named
from speech_llama.piper_tts import DEFAULT_VOICE, VOICES, tts_voice

DATA_FILE_NAME = "data.jsonl"
AUDIO_DIR_NAME = "audio"
AUDIO_FIELD = "audio"
# An input record's own "audio" value is kept under this name rather than overwritten.
ORIGINAL_AUDIO_FIELD = "original_audio"

# --------------------------------------------------------------------------------------------
# Speech from text
# --------------------------------------------------------------------------------------------


def piper_int16(text: str, voice: str = DEFAULT_VOICE) -> tuple[np.ndarray, int]:
    """Raw Piper output for ``text``: (int16 samples of shape (n,), sample rate in Hz).

    Same samples ``PiperVoice.synthesize_wav`` would write (one chunk per sentence, each
    peak-normalised by Piper), without the WAV round trip.
    """
    piper_voice = tts_voice(voice)
    chunks = [chunk.audio_int16_array for chunk in piper_voice.synthesize(text)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return audio, piper_voice.config.sample_rate


def resample_to_16k(audio_int16: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 audio at ``sample_rate`` → float32 in [-1, 1] at 16 kHz, shape (m,).

    Uses the exact rational ratio (320/441 for Piper's 22 050 Hz): an approximate ratio shifts
    pitch and duration slightly and silently ruins recognition.
    """
    audio = audio_int16.astype(np.float32) / 32768.0
    if sample_rate == SAMPLE_RATE:
        return audio
    return np.clip(resample(audio, sample_rate), -1.0, 1.0)


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
        tts_voice(name) if name in VOICES else check_engine(voice_named(name))


def synthesize_text(text: str, voice: str = DEFAULT_VOICE) -> np.ndarray:
    """Speak ``text``: float32 mono waveform at 16 kHz in [-1, 1], shape (n_samples,).

    Raises:
        ValueError: empty text, or text Piper turns into no audio at all.
    """
    if not text or not text.strip():
        raise ValueError("synthesize_text: text is empty")
    if voice not in VOICES:  # the corpus's engines: Festival, Flite, eSpeak NG, Piper variants
        return speak(voice_named(voice), text)
    audio, sample_rate = piper_int16(text, voice)
    if audio.size == 0:
        raise ValueError(f"Piper produced no audio for {text!r}")
    return resample_to_16k(audio, sample_rate)


# Piper phonemises through espeak-ng's library, which is not thread-safe: one Piper call at a time.
_PIPER_LOCK = threading.Lock()
# Texts one engine process speaks in one go (Festival's start-up is ~80 % of one utterance's cost).
SYNTHESIS_CHUNK = 16


def synthesize_texts(texts: list[str], voice: str = DEFAULT_VOICE) -> list[np.ndarray]:
    """Speak each text like `synthesize_text`; a corpus engine speaks the whole list in one process."""
    if voice not in VOICES:
        return speak_many(voice_named(voice), texts)
    with _PIPER_LOCK:
        return [synthesize_text(text, voice) for text in texts]


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
        size = 1 if voice in VOICES else SYNTHESIS_CHUNK
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
        voice: Piper voice name (see ``VOICES``), a corpus voice (``speech_llama.corpus.voices.VOICES``) or
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
    engines = any(chunk[0].voice not in VOICES for chunk in chunks)  # Piper alone gains nothing from threads
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


# --------------------------------------------------------------------------------------------
# CLI: speech-llama synthesize --data IN --out DIR [--voice joe] [--text-field question]
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synthesize`` subcommand's options to ``parser``."""
    parser.add_argument("--data", required=True, help="input records: a local .jsonl file")
    parser.add_argument("--out", required=True, help="output folder (audio/ and data.jsonl)")
    parser.add_argument("--voice", default=DEFAULT_VOICE, choices=sorted(VOICES) + sorted(ENGINE_VOICES) + [TRAINING_MIX],
                        help=f"voice (default Piper {DEFAULT_VOICE}; festival-slt is the held-out speaker of the corpus; "
                             f"{TRAINING_MIX}: every other corpus voice in turn, record by record)")
    parser.add_argument("--text-field", default="question", help="record field to speak")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``synthesize`` from parsed arguments; prints the data.jsonl path; returns 0."""
    data_path = synthesize_records(
        args.data,
        args.out,
        voice=args.voice,
        text_field=args.text_field,
        progress=not args.no_progress,
    )
    print(data_path)
    return 0
