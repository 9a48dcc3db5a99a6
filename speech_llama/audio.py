"""Audio in and out at the one rate the model hears: 16 kHz, mono, float32 in [-1, 1].

- :func:`read_audio` turns any audio value a record can hold (a path, an undecoded
  ``datasets.Audio`` value, an ``{"array", "sampling_rate"}`` dict, a torchcodec decoder) into
  a float32 mono waveform at :data:`SAMPLE_RATE`.
- :func:`resample` changes the rate by the exact rational ratio (e.g. 320/441 from 22 050 Hz):
  an approximate ratio shifts pitch and duration slightly and silently ruins recognition.
- :func:`write_wav` / :func:`read_wav` store waveforms as 16-bit PCM wavs (written atomically,
  so a crash leaves either no file or a complete one — what makes resuming safe).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RecordsError
from .files import atomic_write

SAMPLE_RATE = 16_000


def read_audio(value: Any, *, where: str) -> np.ndarray:
    """Return the waveform of one audio value as float32, 16 kHz, mono, shape (n,).

    ``value`` may be a file path, a ``{"path", "bytes"}`` dict (an undecoded
    ``datasets.Audio`` value), a ``{"array", "sampling_rate"}`` dict, or a decoder object
    with ``get_all_samples()`` (torchcodec, what ``datasets`` returns when decoding).
    Stereo is downmixed with a warning; other rates are resampled with the exact rational
    ratio (e.g. 320/441 from 22 050 Hz), since an approximate ratio ruins recognition.

    ``where`` (e.g. ``"data.jsonl, line 3, column 'audio'"``) is named in every error.

    Raises:
        RecordsError (a ValueError): no audio, or audio that cannot be read.
    """
    if value is None:
        raise RecordsError(f"{where}: no audio")
    try:
        samples, sampling_rate = _decode_audio(value)
        if samples.size == 0:
            raise ValueError("the audio has no samples")
        if sampling_rate <= 0:
            raise ValueError(f"invalid sampling rate {sampling_rate}")
    except Exception as error:  # soundfile, numpy and torchcodec raise many types; all mean unreadable
        raise RecordsError(f"{where}: cannot read audio ({_describe_audio(value)}): {error}") from error
    return resample(_to_mono(samples, where), sampling_rate)


def audio_num_samples(value: Any, *, where: str) -> int:
    """How many 16 kHz samples :func:`read_audio` would return for ``value``, read from the file
    header where there is one (paths, embedded bytes), so a whole data set is checked cheaply."""
    import soundfile

    if value is None:
        raise RecordsError(f"{where}: no audio")
    source = None
    if isinstance(value, (str, os.PathLike)):
        source = str(value)
    elif isinstance(value, dict) and value.get("array") is None and value.get("bytes") is not None:
        source = io.BytesIO(value["bytes"])
    elif isinstance(value, dict) and value.get("array") is None and value.get("path") is not None:
        source = str(value["path"])
    if source is None:
        return len(read_audio(value, where=where))
    try:
        info = soundfile.info(source)
        if info.frames <= 0 or info.samplerate <= 0:
            raise ValueError("the audio has no samples")
    except Exception as error:  # as in read_audio: every decoder error means unreadable
        raise RecordsError(f"{where}: cannot read audio ({_describe_audio(value)}): {error}") from error
    return _resampled_length(int(info.frames), int(info.samplerate))


def _resampled_length(frames: int, source_rate: int, target_rate: int = SAMPLE_RATE) -> int:
    """Length of `resample`'s output (scipy's resample_poly: ⌈n · up / down⌉)."""
    if source_rate == target_rate:
        return frames
    divisor = math.gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    return -(-frames * up // down)


def resample(samples: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio target/source (reduced by the gcd).

    Returns contiguous float32 of shape (round(n · target / source),); the input unchanged
    (as float32) when the rates agree.
    """
    if source_rate != target_rate:
        from scipy.signal import resample_poly

        divisor = math.gcd(source_rate, target_rate)
        samples = resample_poly(samples, target_rate // divisor, source_rate // divisor)
    return np.ascontiguousarray(samples, dtype=np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float audio in [-1, 1] as a mono 16-bit PCM wav, atomically; returns the path."""
    import soundfile

    return atomic_write(path, lambda temp: soundfile.write(temp, samples, sample_rate, subtype="PCM_16", format="WAV"))


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """A 16 kHz mono wav as float32 of shape (n,); error if the rate or channels differ."""
    import soundfile

    audio, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    if sample_rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {sample_rate} Hz with {audio.shape[1]} channels")
    return audio[:, 0]


def _decode_audio(value: Any) -> tuple[np.ndarray, int]:
    """Samples (frames x channels, or 1-D) and their rate, from any supported audio value."""
    if isinstance(value, (str, os.PathLike)):
        return _read_sound_file(value)
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder: data is channels x frames
        decoded = value.get_all_samples()
        return np.asarray(decoded.data).T, int(decoded.sample_rate)
    if isinstance(value, dict) and value.get("array") is not None:
        if value.get("sampling_rate") is None:
            raise ValueError("an {'array'} audio value needs a 'sampling_rate'")
        return _frames_by_channels(np.asarray(value["array"])), int(value["sampling_rate"])
    if isinstance(value, dict) and value.get("bytes") is not None:
        return _read_sound_file(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path") is not None:
        return _read_sound_file(value["path"])
    raise ValueError(f"unsupported audio value of type {type(value).__name__}")


def _read_sound_file(file: str | os.PathLike | io.BytesIO) -> tuple[np.ndarray, int]:
    import soundfile

    samples, sampling_rate = soundfile.read(file, dtype="float32", always_2d=True)
    return samples, int(sampling_rate)


def _frames_by_channels(array: np.ndarray) -> np.ndarray:
    """Arrays from `datasets` are 1-D (mono) or channels x frames; make them frames x channels
    (the shorter axis is taken as the channel axis), and scale integer PCM to [-1, 1]."""
    if np.issubdtype(array.dtype, np.integer):
        array = pcm_to_float(array)
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        array = array.T
    return array


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM → float32 in [-1, 1] as soundfile reads the same file (int16 / 32768; unsigned
    8-bit is centred on 128); the processor's `pcm_to_float` does the same (it must stand alone)."""
    bits = samples.dtype.itemsize * 8
    scale = float(2 ** (bits - 1))
    if samples.dtype.kind == "u":
        return ((samples.astype(np.float64) - scale) / scale).astype(np.float32)
    return (samples.astype(np.float64) / scale).astype(np.float32)


def _to_mono(samples: np.ndarray, where: str) -> np.ndarray:
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise RecordsError(f"{where}: audio has {samples.ndim} dimensions; expected frames x channels")
    channels = samples.shape[1]
    if channels == 1:
        return samples[:, 0]
    warnings.warn(f"{where}: downmixing {channels} channels to mono", stacklevel=3)
    return samples.mean(axis=1)


def _describe_audio(value: Any) -> str:
    """A short description of an audio value for errors (never the raw bytes)."""
    if isinstance(value, dict):
        return f"path={value.get('path')!r}, bytes={'yes' if value.get('bytes') else 'no'}"
    if isinstance(value, (str, os.PathLike)):
        return f"path={str(value)!r}"
    return type(value).__name__


__all__ = ["SAMPLE_RATE", "audio_num_samples", "pcm_to_float", "read_audio", "read_wav", "resample", "write_wav"]
