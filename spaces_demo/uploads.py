"""Checks on a spoken question (an upload or a microphone recording) before the model sees it.

Every rejection is an `UploadRejected` whose message is written for the person using the Space
(what was wrong, what is accepted); nothing here lets a decoder's traceback reach the UI.

Uploads land in Gradio's cache (`upload_folder()`: ``$GRADIO_TEMP_DIR``, else ``<tmp>/gradio``).
A rejected upload is deleted there at once (`discard_upload`); accepted ones and recordings are
removed by Gradio when the server stops, or after a day (`UPLOAD_CACHE`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_llama.audio import SAMPLE_RATE, read_audio
from speech_llama.errors import RecordsError

MAX_BYTES = 10 * 1024 * 1024
# gr.Blocks(delete_cache=…): uploads older than a day are removed daily, and all when the server stops.
UPLOAD_CACHE = (86_400, 86_400)
MAX_SECONDS = 30.0
# Formats libsndfile (soundfile) decodes, which is what `read_audio` uses.
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif")
ACCEPTED = "WAV, FLAC, MP3, OGG or AIFF, at most 10 MB and 30 seconds"


class UploadRejected(ValueError):
    """An audio input the Space will not use; the message is shown to the user as it is."""


@dataclass(frozen=True)
class SpokenQuestion:
    """A checked clip: 16 kHz mono float32 samples and where they came from."""

    audio: np.ndarray
    name: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UploadRejected(f"“{path.name}” is {size / 2**20:.1f} MB; uploads are limited to 10 MB. Please use a shorter clip ({ACCEPTED}).")
    if size == 0:
        raise UploadRejected(f"“{path.name}” is empty. Please upload an audio file ({ACCEPTED}).")


def _check_type(path: Path) -> None:
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        kind = f"a {path.suffix.lower()} file" if path.suffix else "a file without an extension"
        raise UploadRejected(f"“{path.name}” is {kind}, not audio. Only audio files can be used: {ACCEPTED}.")


def _duration(path: Path) -> float:
    """Seconds of audio from the file header; unreadable files are rejected here."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:  # libsndfile raises several types for foreign or broken data
        raise UploadRejected(
            f"“{path.name}” could not be read as audio (is it really a {path.suffix.lstrip('.').upper()} file?). "
            f"Please upload {ACCEPTED}."
        ) from error
    if info.samplerate <= 0 or info.frames <= 0:
        raise UploadRejected(f"“{path.name}” holds no audio samples. Please upload a recording of a spoken question.")
    return info.frames / info.samplerate


def check_spoken_question(path: str | Path, min_seconds: float = 0.1) -> SpokenQuestion:
    """Size, type, length and readability of one audio file → its 16 kHz mono samples.

    Raises:
        UploadRejected: with a message for the user (too big, not audio, too long, unreadable, too short).
    """
    path = Path(path)
    if not path.is_file():
        raise UploadRejected("The audio did not arrive on the server; please upload or record it again.")
    _check_size(path)
    _check_type(path)
    seconds = _duration(path)
    if seconds > MAX_SECONDS:
        raise UploadRejected(f"“{path.name}” is {seconds:.1f} s long; questions can be at most 30 s. Please trim it or record a shorter one.")
    try:
        audio = read_audio(str(path), where=path.name)
    except RecordsError as error:
        raise UploadRejected(f"“{path.name}” could not be decoded as audio. Please upload {ACCEPTED}.") from error
    if len(audio) < min_seconds * SAMPLE_RATE:
        raise UploadRejected(f"“{path.name}” is only {1000 * len(audio) / SAMPLE_RATE:.0f} ms long; please record a whole question.")
    return SpokenQuestion(audio=audio, name=path.name)


def upload_folder() -> Path:
    """Where Gradio stores uploads (the rule of `gradio.utils.get_upload_folder`)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def discard_upload(path: str | Path | None) -> bool:
    """Delete a rejected upload (and the per-file folder Gradio made for it) when it lies inside
    the upload folder; anything elsewhere is left alone. Returns whether something was removed."""
    if not path:
        return False
    root = upload_folder()
    try:
        resolved = Path(path).resolve()
        resolved.relative_to(root)
    except (OSError, ValueError):
        return False
    if resolved == root or not resolved.is_file():
        return False
    resolved.unlink(missing_ok=True)
    parent = resolved.parent
    if parent != root and not any(parent.iterdir()):
        shutil.rmtree(parent, ignore_errors=True)
    return True
