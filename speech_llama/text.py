"""The one text normalisation the project compares transcripts and items under."""

from __future__ import annotations

import re


def normalized(text: str) -> str:
    """Lowercase words only: the form under which two texts count as the same item (and WER is taken)."""
    return " ".join(re.findall(r"[a-z']+", text.lower()))


__all__ = ["normalized"]
