"""A tiny content set for the Space test: tiny-random model, its text importance, a second
checkpoint for |Δθ|, a deactivation result, and audio files to upload (all built in seconds)."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from spaces_demo.content import ContentPlan, compute_text_importance, default_records_path
from speech_llama.presets import build_tiny_random

IMPORTANCE_SAMPLES = 16
PPL_SAMPLES = 8


def write_wav(path: Path, seconds: float, seed: int = 0) -> Path:
    """16-bit mono 16 kHz noise (content is irrelevant for the UI plumbing)."""
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(int(16000 * seconds)) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    return path


def deactivation_result(model_dir: Path, artifact: Path, records: Path, out: Path) -> Path:
    """A real Table 1 row on the tiny model (3 % zeroed), in the deactivation-result contract."""
    from importance.artifact import load_artifact
    from importance.deactivate import build_selection, zeroed
    from speech_llama.generate import load_model
    from speech_llama.perplexity import response_perplexity
    from speech_llama.records import load_records

    model, processor = load_model(model_dir)
    importances = load_artifact(artifact).load_all()
    held_out = load_records(records).select(range(IMPORTANCE_SAMPLES, IMPORTANCE_SAMPLES + PPL_SAMPLES))
    ppl = {"base": response_perplexity(model, processor, held_out).ppl}
    for kind in ("top", "bottom", "random"):
        with zeroed(model, build_selection(importances, 0.03, kind, "global", seed=0)):
            ppl[kind] = response_perplexity(model, processor, held_out).ppl
    result = {"fraction": 0.03, "selection": "global", "input": "text", "ppl": ppl, "num_samples": PPL_SAMPLES}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def build_tiny_content(root: Path) -> SimpleNamespace:
    """root/artifacts (the Space's folder; its checkpoints/tiny-seed0 is the served model, seed1 a
    second checkpoint for |Δθ|) and root/uploads (files to upload)."""
    folder = root / "artifacts"
    model_dir = build_tiny_random(folder / "checkpoints" / "tiny-seed0", seed=0)
    plan = ContentPlan(folder=folder, model_dir=model_dir, samples=IMPORTANCE_SAMPLES)
    records = default_records_path()
    artifact = compute_text_importance(model_dir, plan.importance_path, records, samples=IMPORTANCE_SAMPLES)
    build_tiny_random(folder / "checkpoints" / "tiny-seed1", seed=1)
    deactivation_result(model_dir, artifact, records, folder / "deactivation" / "tiny-text-3pct.json")
    uploads = root / "uploads"
    uploads.mkdir()
    oversized = uploads / "long-question.wav"
    with open(oversized, "wb") as handle:  # > 10 MB: rejected on size before anything reads it
        handle.write(b"RIFF" + bytes(11 * 2**20))
    not_audio = uploads / "notes.txt"
    not_audio.write_text("this is not audio\n")
    return SimpleNamespace(
        plan=plan,
        model_dir=model_dir,
        folder=folder,
        artifact=artifact,
        question_wav=write_wav(uploads / "question.wav", 1.5),
        oversized=oversized,
        not_audio=not_audio,
    )
