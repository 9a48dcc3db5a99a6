"""LoRA for Stage 1: adapters on the LLM's attention and MLP projections, adaptor trained fully.

Settings (docs/training.md): q, k, v, o, gate, up, down projections of every decoder layer, r = 16,
α = 2r, dropout 0.05. The speech adaptor is a peft `modules_to_save` module: trained in full and
stored inside the adapter, so the adapter alone turns the base model into the trained one. The
Whisper encoder stays frozen (its own q/k/v projections are not targeted).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# A regex is matched against full module names: it keeps the encoder's own q/k/v projections out.
LORA_TARGET_PATTERN = r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
ADAPTOR_MODULE = "adaptor"


def lora_config(r: int = 16, alpha: int | None = None, dropout: float = 0.05) -> LoraConfig:
    """peft `LoraConfig` for SpeechLlama (α defaults to 2r)."""
    return LoraConfig(
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=LORA_TARGET_PATTERN,
        modules_to_save=[ADAPTOR_MODULE],
        bias="none",
    )


def apply_lora(model: torch.nn.Module, config: LoraConfig) -> PeftModel:
    """Wrap a SpeechLlama model: LLM frozen except its LoRA adapters, adaptor trainable, encoder frozen.

    Raises:
        ValueError: the config matched no LLM projection (a model without LLaMA-style names).
    """
    peft_model = get_peft_model(model, config)
    _check_trainable(peft_model)
    return peft_model


def _check_trainable(peft_model: PeftModel) -> None:
    """Stage-1 LoRA invariants: LoRA weights and the adaptor copy train; nothing of the encoder does."""
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    if not any(".lora_A." in name for name in trainable):
        raise ValueError(f"LoRA matched no projection ({', '.join(LORA_PROJECTIONS)}) in the LLM's decoder layers")
    if not any(f"{ADAPTOR_MODULE}.modules_to_save." in name for name in trainable):
        raise ValueError("the speech adaptor is not trainable under LoRA (expected a peft modules_to_save copy)")
    encoder = [name for name in trainable if ".encoder." in name]
    if encoder:
        raise ValueError(f"the speech encoder must stay frozen, but these are trainable: {encoder[:3]}")


def merge_lora(peft_model: PeftModel) -> torch.nn.Module:
    """The plain model with LoRA folded into the weights and the trained adaptor in place."""
    return peft_model.merge_and_unload()


def load_adapted(base: str, adapter_dir: str, dtype: torch.dtype = torch.float32) -> PeftModel:
    """Base model (folder or Hub id) + saved adapter → PeftModel, project classes (for the merged export)."""
    from modeling_speech_llama import SpeechLlamaForCausalLM

    base_model = SpeechLlamaForCausalLM.from_pretrained(base, dtype=dtype).eval()
    return PeftModel.from_pretrained(base_model, adapter_dir)


__all__ = ["LORA_PROJECTIONS", "LORA_TARGET_PATTERN", "apply_lora", "load_adapted", "lora_config", "merge_lora"]
