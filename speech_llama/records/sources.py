"""Reading a record source into a `datasets.Dataset`: a local ``.jsonl``, a ``save_to_disk``
folder, or a Hub dataset id (never a mistyped local path)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
import pyarrow as pa

from ..errors import RecordsError
from ..files import JsonlError, read_jsonl_numbered

logger = logging.getLogger("speech_llama.records")


def open_source(
    source: str | os.PathLike, split: str, max_samples: int | None
) -> tuple[datasets.Dataset, list[str] | None, str, Path | None]:
    """(dataset, row labels or None, source name for errors, folder relative audio paths are
    resolved against or None for the Hub) of one source.

    Raises:
        RecordsError: an unsupported file, a broken JSONL line, a folder that is not a dataset.
        FileNotFoundError: neither an existing path nor a Hub id.
    """
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        dataset, row_labels = _read_jsonl(path, max_samples)
        return dataset, row_labels, str(path), path.parent.resolve()
    if path.is_dir():
        return _load_saved_dataset(path, split), None, str(path), path.resolve()
    if path.exists():
        raise RecordsError(f"{path}: unsupported file type; expected a .jsonl file or a save_to_disk folder")
    if _looks_like_hub_id(str(source)):
        return _load_hub_split(str(source), split), None, str(source), None
    raise FileNotFoundError(f"{source}: no such file or folder, and not a Hub dataset id (owner/name)")


def check_max_samples(max_samples: int | None) -> None:
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
