"""speech_llama/real_shapes.py holds the published configurations (Llama-3.2-1B / 3.1-8B, whisper-large-v3),
its counts agree with a model built at those shapes, and bench/gpu_recipe.py refuses in one line without CUDA.
Seconds (meta-device models only)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speech_llama.real_shapes import encoder_config, llm_config, parameter_counts, predicted_memory

REPO = Path(__file__).resolve().parents[1]


def test_llama_3_2_1b_config_is_the_published_one():
    config = llm_config("llama-3.2-1b")
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (128_256, 2048, 8192)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 32, 8, 64)
    assert config.tie_word_embeddings is True
    rope = config.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500_000.0 and rope["factor"] == 32.0
    assert (rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]) == (1.0, 4.0, 8192)
    eight = llm_config("llama-3.1-8b")
    assert (eight.hidden_size, eight.intermediate_size, eight.num_hidden_layers, eight.tie_word_embeddings) == (4096, 14336, 32, False)
    assert llm_config("llama-3.2-1b", num_hidden_layers=2).num_hidden_layers == 2


def test_whisper_large_v3_encoder_config():
    config = encoder_config()
    assert (config.num_mel_bins, config.d_model, config.encoder_layers) == (128, 1280, 32)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.max_source_positions) == (20, 5120, 1500)


def test_counts_match_a_model_built_at_those_shapes():
    """Two layers of each: the meta-device count equals the parameters of real tensors' shapes."""
    from transformers import AutoModelForCausalLM
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    text, whisper = llm_config("llama-3.2-1b", 2), encoder_config(2)
    counts = parameter_counts(text, whisper)
    with_speech_token = copy.deepcopy(text)
    with_speech_token.vocab_size += 1  # the row `compose` adds for <speech>
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(with_speech_token)
        encoder = WhisperEncoder(whisper)
    adaptor = 6400 * 2048 + 2048 + 2048 * 2048 + 2048
    expected = sum(p.numel() for p in llm.parameters()) + sum(p.numel() for p in encoder.parameters()) + adaptor
    assert counts.params == expected
    assert counts.unit == 60_821_504 and counts.embed == 128_257 * 2048 and counts.adaptor == adaptor
    # LoRA r 16 on q, k, v, o, gate, up, down: 16 · (4096 + 2·2560 + 4096 + 3·10240) per layer
    assert counts.lora == 2 * 16 * (4096 + 2 * 2560 + 4096 + 3 * 10240)


def test_memory_model_shrinks_with_ranks_and_refuses_nonsense():
    counts = parameter_counts(llm_config("llama-3.2-1b"), encoder_config())
    one, eight = predicted_memory(counts, "full", 1, 2), predicted_memory(counts, "full", 8, 2)
    assert eight["sharded"] * 8 == pytest.approx(one["sharded"], rel=1e-6) and eight["gathered"] > 0 == one["gathered"]
    assert predicted_memory(counts, "lora", 1, 2)["total"] < one["total"]
    with pytest.raises(ValueError, match="unknown LLM"):
        llm_config("llama-9")
    with pytest.raises(ValueError, match="scale must be a positive int"):
        encoder_config(scale=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_recipe_refuses_in_one_line_without_cuda():
    result = subprocess.run([sys.executable, "bench/gpu_recipe.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bench/gpu_recipe.py: no CUDA device here; run it on a lent GPU (or --smoke for the CPU code path)"]
