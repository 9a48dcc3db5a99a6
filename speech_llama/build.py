"""Assemble a SpeechLlama model folder from an LLM and a Whisper encoder (Hub ids or local dirs).

The folder is a complete Hub repo: config with `auto_map`, the remote-code files, safetensors
weights, tokenizer with the `<speech>` token, feature-extractor/processor config and a model card.
The named builds (`tiny-random`, `offline-mini`, …) live in :mod:`speech_llama.presets`; the
`speech-llama build` command is `apps.build`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from modeling_speech_llama import SpeechAdaptor, SpeechLlamaConfig, SpeechLlamaForCausalLM, SpeechLlamaProcessor

from .offline.cache import build_atomically

SPEECH_TOKEN = "<speech>"
AUTO_MAP = {
    "AutoConfig": "configuration_speech_llama.SpeechLlamaConfig",
    "AutoModel": "modeling_speech_llama.SpeechLlamaForCausalLM",
    "AutoModelForCausalLM": "modeling_speech_llama.SpeechLlamaForCausalLM",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BuildInfo:
    """What the model card says about a build."""

    llm: str
    encoder: str
    preset: str | None = None
    licences: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # How the adaptor was trained and what it measured; None: freshly initialised by `compose`.
    adaptor: str | None = None


UNTRAINED_ADAPTOR = ("freshly initialised — this model has not been trained on speech yet (align it with "
                     "`speech-llama build --preset offline-mini-aligned`, or train it with `accelerate launch trainers/run.py`)")


def add_speech_token(tokenizer) -> int:
    """Add `<speech>` as a special token (no-op when present); returns its id."""
    if SPEECH_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([SPEECH_TOKEN], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(SPEECH_TOKEN)


def compose(encoder, language_model, tokenizer, feature_extractor, downsample: int = 5, adaptor_hidden: int = 2048,
            adaptor_seed: int = 0):
    """Join a Whisper encoder and a causal LM with a fresh adaptor (initialised from `adaptor_seed`, so
    the same parts always give the same model).

    Returns (SpeechLlamaForCausalLM, SpeechLlamaProcessor). The LM's embeddings are resized for
    `<speech>` (mean-initialised; the row is never read since placeholders are replaced).
    """
    speech_token_id = add_speech_token(tokenizer)
    if language_model.get_input_embeddings().num_embeddings < len(tokenizer):
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config = SpeechLlamaConfig(
        encoder_config=encoder.config.to_dict(),
        text_config=language_model.config.to_dict(),
        adaptor_downsample=downsample,
        adaptor_hidden_size=adaptor_hidden,
        speech_token_id=speech_token_id,
    )
    # Build the shell on the meta device: the real encoder and LM are moved in, not copied. The
    # encoder's tensors go into the shell's variable-length encoder (same keys as WhisperEncoder).
    with torch.device("meta"):
        model = SpeechLlamaForCausalLM(config)
    model.encoder.load_state_dict(encoder.state_dict(), strict=True, assign=True)
    model.encoder.requires_grad_(not config.freeze_encoder)
    model.language_model = language_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(adaptor_seed)
        model.adaptor = SpeechAdaptor(config).to(dtype=language_model.dtype)
        model._init_weights(model.adaptor)
    model.generation_config = _generation_config(language_model, tokenizer)
    model.config.auto_map = dict(AUTO_MAP)
    processor = SpeechLlamaProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        speech_token=SPEECH_TOKEN,
        downsample=downsample,
        max_speech_seconds=config.max_speech_seconds,
    )
    return model.eval(), processor


def _generation_config(language_model, tokenizer) -> GenerationConfig:
    generation_config = GenerationConfig.from_dict(language_model.generation_config.to_dict())
    generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if generation_config.eos_token_id is None:
        generation_config.eos_token_id = tokenizer.eos_token_id
    return generation_config


def save_model_folder(model, processor, out_dir: Path, info: BuildInfo) -> Path:
    """Write the complete Hub folder atomically (a temp dir renamed into place, replacing an old one)."""

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        ensure_auto_map(staging)
        (staging / "README.md").write_text(model_card(model, info))

    return build_atomically(Path(out_dir), write, replace=True)


def ensure_auto_map(folder: Path) -> None:
    """save_pretrained records only the auto class the model registered; AutoModel must map too."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {**config.get("auto_map", {}), **AUTO_MAP}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def model_card(model, info: BuildInfo) -> str:
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    licences = "\n".join(f"- {part}: {licence}" for part, licence in info.licences.items()) or "- see the source models"
    notes = "\n".join(f"- {note}" for note in info.notes)
    return f"""---
library_name: transformers
tags: [speech-llama, llama-omni, speech, audio-text-to-text]
pipeline_tag: audio-text-to-text
---
# SpeechLlama{f' ({info.preset})' if info.preset else ''}

A LLaMA-Omni Stage-1 style speech LLM built with `speech-llama build`: Whisper encoder (frozen) →
concat-{config.adaptor_downsample} adaptor (Linear {config.encoder_config.d_model * config.adaptor_downsample} →
{config.adaptor_hidden_size} → ReLU → Linear → {config.text_config.hidden_size}) → causal LM.

- LLM: `{info.llm}` ({config.text_config.num_hidden_layers} layers, hidden {config.text_config.hidden_size})
- Speech encoder: `{info.encoder}` (d_model {config.encoder_config.d_model}, {config.encoder_config.encoder_layers} layers)
- Parameters: {n_params / 1e6:.1f} M
- Adaptor: {info.adaptor or UNTRAINED_ADAPTOR}
{notes}

## Licences
{licences}

## Use

```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained(REPO, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True)
# The folder's S2T instruction follows the clip ("" in processor_config.json: the clip alone).
content = [{{"type": "audio"}}] + ([{{"type": "text", "text": processor.speech_instruction}}] if processor.speech_instruction else [])
messages = [{{"role": "user", "content": content}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[prompt], audio=[waveform_16khz], sampling_rate=16000, return_tensors="pt")
print(processor.batch_decode(model.generate(**inputs, max_new_tokens=64)[:, inputs.input_ids.shape[1]:], skip_special_tokens=True))
```
"""


def build_from_pretrained(
    llm: str,
    encoder: str,
    out_dir: Path,
    downsample: int = 5,
    adaptor_hidden: int = 2048,
    dtype: str = "float32",
    info: BuildInfo | None = None,
) -> Path:
    """Build from Hub ids (online) or local folders: any causal LM + any Whisper checkpoint."""
    torch_dtype = DTYPES[dtype]
    tokenizer = AutoTokenizer.from_pretrained(llm)
    language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=torch_dtype)
    whisper_encoder = WhisperModel.from_pretrained(encoder, dtype=torch_dtype).get_encoder()
    feature_extractor = WhisperFeatureExtractor.from_pretrained(encoder)
    model, processor = compose(whisper_encoder, language_model, tokenizer, feature_extractor, downsample, adaptor_hidden)
    return save_model_folder(model, processor, out_dir, info or BuildInfo(llm=llm, encoder=encoder))


def tiny_random_configs(vocab_size: int) -> tuple[WhisperConfig, LlamaConfig]:
    """A 2-layer Whisper encoder and a 4-layer LLaMA, small enough for tests that take seconds."""
    encoder_config = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
    )
    text_config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        # Larger than LLaMA's 0.02 so random logits are peaked: greedy ties would make tests flaky.
        initializer_range=0.2,
    )
    return encoder_config, text_config


__all__ = [
    "AUTO_MAP",
    "DTYPES",
    "SPEECH_TOKEN",
    "BuildInfo",
    "add_speech_token",
    "build_from_pretrained",
    "compose",
    "ensure_auto_map",
    "model_card",
    "save_model_folder",
    "tiny_random_configs",
]
