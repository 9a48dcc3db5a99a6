"""The paper's real model shapes, written from the public config values (no Hub access needed).

- Llama-3.2-1B-Instruct: vocab 128 256, hidden 2048, 16 layers, 32 heads (head 64), 8 KV heads,
  intermediate 8192, tied embeddings, RoPE θ 500 000 with ``llama3`` scaling (factor 32, low 1,
  high 4, original 8192), RMSNorm ε 1e-5.
- Llama-3.1-8B-Instruct: vocab 128 256, hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate
  14 336, untied, RoPE θ 500 000 with ``llama3`` scaling (factor 8).
- whisper-large-v3 encoder: 128 mel bins, d_model 1280, 32 layers, 20 heads, FFN 5120, 1500 positions.

:func:`shape_faithful_parts` builds random-weight parts at these shapes (optionally with fewer
layers: every matrix keeps its real shape, only their count changes); :func:`parameter_counts`
counts a SpeechLlama at any shape on the meta device (no memory), for the memory model
(:func:`speech_llama.fsdp.memory_per_rank`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, WhisperConfig

# The adaptor of the paper (LLaMA-Omni): k = 5 frames concatenated, hidden 2048.
ADAPTOR = {"downsample": 5, "adaptor_hidden": 2048}
LLAMA3_VOCAB = 128_256

LLMS = {
    "llama-3.2-1b": dict(
        hub_id="meta-llama/Llama-3.2-1B-Instruct", vocab_size=LLAMA3_VOCAB, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        rope_factor=32.0,
    ),
    "llama-3.1-8b": dict(
        hub_id="meta-llama/Llama-3.1-8B-Instruct", vocab_size=LLAMA3_VOCAB, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
        rope_factor=8.0,
    ),
}
WHISPER_LARGE_V3 = dict(
    hub_id="openai/whisper-large-v3", num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
    encoder_ffn_dim=5120, max_source_positions=1500, vocab_size=51866,
)


def llm_config(name: str, num_hidden_layers: int | None = None, scale: int = 1) -> LlamaConfig:
    """The LlamaConfig of ``name`` (:data:`LLMS`), with ``num_hidden_layers`` decoder layers if given.

    ``scale`` > 1 divides every width by it (hidden, intermediate, heads; vocab by scale²) for smoke
    tests: the structure (GQA ratio, tying, RoPE scaling) stays, the shapes do not.
    """
    if name not in LLMS:
        raise ValueError(f"unknown LLM {name!r}; choose one of {sorted(LLMS)}")
    spec = LLMS[name]
    _check_scale(scale)
    return LlamaConfig(
        vocab_size=spec["vocab_size"] // (scale * scale),
        hidden_size=spec["hidden_size"] // scale,
        intermediate_size=spec["intermediate_size"] // scale,
        num_hidden_layers=num_hidden_layers or spec["num_hidden_layers"],
        num_attention_heads=max(spec["num_attention_heads"] // scale, spec["num_key_value_heads"] // scale, 1),
        num_key_value_heads=max(spec["num_key_value_heads"] // scale, 1),
        head_dim=spec["head_dim"] // scale if scale > 1 else spec["head_dim"],
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=spec["tie_word_embeddings"],
        bos_token_id=128000 if scale == 1 else 1,
        eos_token_id=128009 if scale == 1 else 2,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": spec["rope_factor"],
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )


def encoder_config(encoder_layers: int | None = None, scale: int = 1) -> WhisperConfig:
    """whisper-large-v3's config (encoder_layers if given; ``scale`` as in :func:`llm_config`).

    The decoder entries are Whisper's own but never built: the SpeechLlama keeps the encoder only.
    """
    _check_scale(scale)
    spec = WHISPER_LARGE_V3
    layers = encoder_layers or spec["encoder_layers"]
    return WhisperConfig(
        num_mel_bins=spec["num_mel_bins"], d_model=spec["d_model"] // scale, encoder_layers=layers,
        encoder_attention_heads=max(spec["encoder_attention_heads"] // scale, 1),
        encoder_ffn_dim=spec["encoder_ffn_dim"] // scale, decoder_layers=1,
        decoder_attention_heads=max(spec["encoder_attention_heads"] // scale, 1),
        decoder_ffn_dim=spec["encoder_ffn_dim"] // scale, max_source_positions=spec["max_source_positions"],
        vocab_size=spec["vocab_size"],
    )


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a SpeechLlama at one shape (what the memory model needs).

    Attributes:
        params: P, all parameters (tied embeddings counted once).
        decoder: parameters in the LLM's decoder layers (importance analyses these).
        unit: one decoder layer (the largest FSDP unit).
        embed: the input embedding matrix (vocab × hidden).
        root: what stays gathered for a whole importance step (embeddings, lm_head, norms, adaptor).
        encoder: the frozen Whisper encoder.
        adaptor: the adaptor (trained by every method).
        lora: LoRA adapters at r = 16 on q, k, v, o, gate, up, down of every decoder layer.
    """

    params: int
    decoder: int
    unit: int
    embed: int
    root: int
    encoder: int
    adaptor: int
    lora: int

    def trainable(self, method: str) -> int:
        """P_t: full / layer_lr train the LLM and adaptor; lora the adapters and adaptor."""
        return self.lora + self.adaptor if method == "lora" else self.params - self.encoder


def parameter_counts(text_config: LlamaConfig, whisper_config: WhisperConfig, lora_r: int = 16,
                     vocab_rows: int | None = None) -> ParameterCounts:
    """Count on the meta device (no memory, milliseconds even for 8B).

    ``vocab_rows``: embedding rows after the `<speech>` token is added (default vocab + 1, as
    `speech_llama.build.compose` resizes a Llama-3 tokenizer's 128 256 to 128 257).
    """
    from modeling_speech_llama import SpeechLlamaConfig, SpeechLlamaForCausalLM

    rows = vocab_rows or text_config.vocab_size + 1
    text = text_config.to_dict() | {"vocab_size": rows}
    config = SpeechLlamaConfig(encoder_config=whisper_config.to_dict(), text_config=text,
                               adaptor_downsample=ADAPTOR["downsample"], adaptor_hidden_size=ADAPTOR["adaptor_hidden"])
    with torch.device("meta"):
        model = SpeechLlamaForCausalLM(config)
    named = dict(model.named_parameters())  # shared (tied) tensors appear once
    total = sum(p.numel() for p in named.values())
    decoder = sum(p.numel() for n, p in named.items() if n.startswith("language_model.") and ".layers." in n)
    encoder = sum(p.numel() for n, p in named.items() if n.startswith("encoder."))
    encoder_layers = sum(p.numel() for n, p in named.items() if n.startswith("encoder.layers."))
    adaptor = sum(p.numel() for n, p in named.items() if n.startswith("adaptor."))
    hidden, kv = text_config.hidden_size, text_config.num_key_value_heads * text_config.head_dim
    q = text_config.num_attention_heads * text_config.head_dim
    ffn = text_config.intermediate_size
    per_layer_lora = lora_r * ((hidden + q) + (hidden + kv) * 2 + (q + hidden) + (hidden + ffn) * 2 + (ffn + hidden))
    return ParameterCounts(
        params=total, decoder=decoder, unit=decoder // text_config.num_hidden_layers,
        embed=rows * hidden, root=total - decoder - encoder_layers, encoder=encoder, adaptor=adaptor,
        lora=per_layer_lora * text_config.num_hidden_layers,
    )


def predicted_memory(counts: ParameterCounts, method: str, ranks: int, dtype_bytes: int) -> dict[str, int]:
    """`memory_per_rank` for one method at these counts (bytes per rank, activations not included).

    Importance keeps its root gathered for a step (embeddings, lm_head, adaptor, norms); training keeps
    accelerate's tail unit (lm_head: the embedding matrix's size) — as bench/fsdp_memory.py models it.
    """
    from .fsdp import memory_per_rank

    gathered = {}
    if ranks > 1:
        root = counts.root if method == "importance" else counts.embed
        gathered = {"unit": counts.unit, "root": root}
    if method == "importance":
        return memory_per_rank("importance", counts.params, ranks, dtype_bytes, analysed=counts.decoder, **gathered)
    params = counts.params + (counts.lora + counts.adaptor if method == "lora" else 0)  # LoRA: base + adapters + adaptor copy
    return memory_per_rank(method, params, ranks, dtype_bytes, trainable=counts.trainable(method), **gathered)


def shape_faithful_parts(llm: str, decoder_layers: int | None, encoder_layers: int | None, scale: int = 1,
                         seed: int = 0, dtype: torch.dtype = torch.float32):
    """(Whisper encoder, LlamaForCausalLM) with random weights at the real shapes (``scale`` 1).

    The encoder is built alone (`WhisperEncoder`): building the whole Whisper model would allocate its
    32-layer decoder only to drop it.
    """
    from transformers import AutoModelForCausalLM
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    text_config = llm_config(llm, decoder_layers, scale)
    whisper_config = encoder_config(encoder_layers, scale)
    language_model = AutoModelForCausalLM.from_config(text_config, dtype=dtype)
    encoder = WhisperEncoder(whisper_config).to(dtype)
    return encoder, language_model


__all__ = [
    "ADAPTOR",
    "LLAMA3_VOCAB",
    "LLMS",
    "ParameterCounts",
    "WHISPER_LARGE_V3",
    "encoder_config",
    "llm_config",
    "parameter_counts",
    "predicted_memory",
    "shape_faithful_parts",
]
