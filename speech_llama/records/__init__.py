"""QA / instruction records: load them from a Hub id, a local `datasets` folder or a JSONL file.

Every source is brought to one contract (docs/model.md, "Contracts"):

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

Modules: `sources` (reading a source), `layout` (which columns hold the fields), `fields` (the
text fields, checked), `audio_column` (the audio column).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import datasets

from ..errors import RecordsError
from .audio_column import AUDIO_FEATURE, audio_column, check_audio_present
from .fields import Locator, check_targets_present, text_columns
from .layout import AUDIO_COLUMNS, HUB_DATASET_KINDS, Layout, detect_layout, select_rows
from .sources import check_max_samples, open_source

RECORD_FEATURES = {
    "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")),
    "response": datasets.Value("string"),
}


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
    return load_located_records(source, split, max_samples, require_audio, require_answers)[0]


def load_located_records(
    source: str | os.PathLike,
    split: str = "test",
    max_samples: int | None = None,
    require_audio: bool = False,
    require_answers: bool = True,
) -> tuple[datasets.Dataset, Locator]:
    """:func:`load_records` plus a :class:`Locator`: ``locate(index, column)`` names record
    ``index``'s place in the source (``"data.jsonl, line 7, column 'audio'"``), so a consumer
    that checks values later (a clip's length) reports them as the loader does."""
    check_max_samples(max_samples)
    dataset, row_labels, source_name, base_dir = open_source(source, split, max_samples)
    if len(dataset) == 0:
        raise RecordsError(f"{source_name}: no records")
    return _normalize(
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
    return _normalize(dataset, source_name, max_samples=max_samples, require_audio=require_audio,
                      require_answers=require_answers, base_dir=base_dir, row_labels=row_labels)[0]


def _normalize(
    dataset: datasets.Dataset,
    source_name: str,
    *,
    max_samples: int | None,
    require_audio: bool,
    require_answers: bool,
    base_dir: str | os.PathLike | None,
    row_labels: Sequence[str] | None,
) -> tuple[datasets.Dataset, Locator]:
    check_max_samples(max_samples)
    layout = detect_layout(dataset.column_names, source_name)
    if row_labels is None:
        row_labels = [f"row {index + 1}" for index in range(len(dataset))]
    dataset, row_labels = select_rows(dataset, row_labels, layout, max_samples)
    locate = Locator(source_name, row_labels)

    texts = text_columns(dataset, layout, locate)
    if require_answers:
        check_targets_present(texts, layout, locate)
    records = datasets.Dataset.from_dict(
        texts, features=datasets.Features({name: RECORD_FEATURES[name] for name in texts})
    )
    if layout.audio is None:
        if require_audio:
            raise RecordsError(
                f"{source_name}: audio is required but there is no audio column (tried {AUDIO_COLUMNS}). "
                f"Columns found: {dataset.column_names}"
            )
        return records, locate
    audio = audio_column(dataset, layout.audio, locate, base_dir)
    if require_audio:
        check_audio_present(audio, layout.audio, locate)
    return datasets.concatenate_datasets([records, audio], axis=1), Locator(source_name, row_labels, layout.audio)


__all__ = [
    "AUDIO_FEATURE",
    "HUB_DATASET_KINDS",
    "Layout",
    "Locator",
    "RecordsError",
    "detect_layout",
    "load_located_records",
    "load_records",
    "normalize_columns",
]
