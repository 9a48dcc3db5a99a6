"""Small file io shared by every part: atomic writes and JSONL read / write.

An atomic write goes to a temporary sibling that is renamed into place with ``os.replace``, so
a reader (or a resumed run) sees either the old file, no file, or the complete new one — never
a torn one. JSONL is one JSON object per line; blank lines are skipped when reading, and errors
name the file and the 1-based line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A line of a JSONL file that is not a JSON object. The message names file and line;
    ``path``, ``line``, ``problem`` and ``cause`` (the ``json.JSONDecodeError``, or None for a
    non-object value) let a caller phrase it in its own terms."""

    def __init__(self, path: Path, line: int, problem: str, cause: json.JSONDecodeError | None = None):
        self.path, self.line, self.problem, self.cause = path, line, problem, cause
        super().__init__(f"{path}, line {line}: {problem}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_usual_modes(folder: str | os.PathLike) -> None:
    """Every file under `folder` readable as the umask allows (0644 under 022): libraries that write
    through `mkstemp` (safetensors' save among them) leave 0600, which other users cannot read."""
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` on a temporary sibling of ``path`` and rename it into place.

    The parent folder is created; the temporary file is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp_name))
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically; returns its path."""
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (with a final newline) atomically; returns its path."""
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def read_jsonl_numbered(path: str | os.PathLike, limit: int | None = None) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSONL file, in order.

    Stops after ``limit`` objects (the rest of the file is not read).

    Raises:
        JsonlError: a line that is not valid JSON or not a JSON object, naming file and line.
    """
    path = Path(path)
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise JsonlError(path, line_number, f"invalid JSON: {error}", error) from error
            if not isinstance(row, dict):
                raise JsonlError(path, line_number, f"expected a JSON object, got {type(row).__name__}")
            rows.append((line_number, row))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every non-blank line of a JSONL file as a dict (see :func:`read_jsonl_numbered`)."""
    return [row for _, row in read_jsonl_numbered(path)]


def jsonl_text(rows: Iterable[Mapping]) -> str:
    """Rows as JSONL text (UTF-8 kept as is, one object per line, final newline)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write rows as JSONL atomically; returns the path."""
    return atomic_write_text(path, jsonl_text(rows))


__all__ = [
    "JsonlError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "jsonl_text",
    "read_jsonl",
    "read_jsonl_numbered",
    "write_jsonl",
]
