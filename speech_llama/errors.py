"""The library's input error, shared by :mod:`speech_llama.records` and :mod:`speech_llama.audio`."""

from __future__ import annotations


class RecordsError(ValueError):
    """A source, a record or its audio cannot be turned into QA / instruction records; the
    message says where (source, row, column)."""


__all__ = ["RecordsError"]
