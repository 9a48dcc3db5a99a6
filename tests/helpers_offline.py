"""Shared helpers for the real-weight offline tests (Whisper converter, Piper synthesis)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

# General-knowledge sentences, questions and statements, spelled the way Whisper writes them
# (no digits, so "one hundred" vs "100" cannot count as an error).
ENGLISH_SENTENCES = [
    "The capital of France is Paris.",
    "Water turns into ice when it gets very cold.",
    "The sun rises in the east and sets in the west.",
    "Mount Everest is the highest mountain in the world.",
    "The Pacific Ocean is the largest ocean on Earth.",
    "Bees make honey from the nectar of flowers.",
    "The heart pumps blood through the human body.",
    "Shakespeare wrote many famous plays and poems.",
    "Plants need sunlight and water to grow.",
    "Who painted the famous picture of the Mona Lisa?",
    "What is the largest planet in our solar system?",
    "How many legs does a spider have?",
    "Which country is famous for its pyramids?",
    "The Great Wall of China is very long.",
    "Penguins are birds that cannot fly.",
    "Light travels much faster than sound.",
    "The river Nile flows through Egypt.",
    "What language do people speak in Brazil?",
    "The first man to walk on the moon was Neil Armstrong.",
    "Dolphins are intelligent animals that live in the sea.",
    "Where is the Statue of Liberty located?",
    "Gold is a precious metal that does not rust.",
    "What is the main ingredient in bread?",
    "The library opens early every morning.",
]


def normalise_for_wer(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace: WER counts words, not typography."""
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    return " ".join(text.split())


def transcribe(model, processor, audios: list[np.ndarray]) -> list[str]:
    """Greedy Whisper transcripts of 16 kHz float32 waveforms, one batch."""
    import torch

    features = processor(audios, sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        token_ids = model.generate(features.input_features)
    return processor.batch_decode(token_ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------
# A tiny CTranslate2 v6 writer, to build small valid and broken files for parser tests.
# ------------------------------------------------------------------------------------------

CT2_DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2,
                 np.dtype("int32"): 3, np.dtype("float16"): 4}


def ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_variable(name: str, array: np.ndarray, dtype_id: int | None = None,
                 n_bytes: int | None = None) -> bytes:
    """One serialised variable; ``n_bytes``/``dtype_id`` can be forced to build broken files."""
    array = np.ascontiguousarray(array)
    dtype_id = CT2_DTYPE_IDS[array.dtype] if dtype_id is None else dtype_id
    payload = array.tobytes()
    return (
        ct2_string(name)
        + struct.pack("<B", array.ndim)
        + struct.pack(f"<{array.ndim}I", *array.shape)
        + struct.pack("<B", dtype_id)
        + struct.pack("<I", len(payload) if n_bytes is None else n_bytes)
        + payload
    )


def ct2_model_bytes(variables: list[bytes], aliases: dict[str, str] | None = None,
                    version: int = 6, spec: str = "WhisperSpec") -> bytes:
    aliases = aliases or {}
    return (
        struct.pack("<I", version)
        + ct2_string(spec)
        + struct.pack("<I", 3)
        + struct.pack("<I", len(variables))
        + b"".join(variables)
        + struct.pack("<I", len(aliases))
        + b"".join(ct2_string(a) + ct2_string(t) for a, t in aliases.items())
    )


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
