"""The record contract's ``audio`` column: ``datasets.Audio(16 kHz, decode=False)`` values, with
local paths resolved and checked (decode them with :func:`speech_llama.audio.read_audio`)."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ..audio import SAMPLE_RATE
from ..errors import RecordsError
from .fields import Locator

AUDIO_FEATURE = datasets.Audio(sampling_rate=SAMPLE_RATE, decode=False)


def audio_column(
    dataset: datasets.Dataset, column: str, locate: Locator, base_dir: str | os.PathLike | None
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
    values: list, column: str, locate: Locator, base_dir: str | os.PathLike | None
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


def _check_stored_audio_files(audio: datasets.Dataset, column: str, locate: Locator) -> None:
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


def check_audio_present(audio: datasets.Dataset, column: str, locate: Locator) -> None:
    missing = pc.is_null(_arrow_column(audio, "audio")).to_pylist()
    if True in missing:
        raise RecordsError(f"{locate(missing.index(True), column)}: audio is required but missing")
