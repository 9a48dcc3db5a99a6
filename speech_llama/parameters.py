"""Where a parameter of a SpeechLlama model sits, read from its name.

The LLM's decoder layers are ``language_model.model.layers.{l}.{suffix}`` (``model.layers.{l}.…``
for a bare LLM); the suffix names the module type (``mlp.down_proj.weight``). Wrappers only add
a prefix (peft's ``base_model.model.``, DDP's ``module.``), so the pattern is matched after a dot
or at the start. The Whisper encoder's ``encoder.layers.{l}`` are not decoder layers.
"""

from __future__ import annotations

import re

DECODER_LAYER_NAME = re.compile(r"(?:^|\.)model\.layers\.(\d+)\.(.+)$")


def layer_and_module(name: str) -> tuple[int, str] | None:
    """(layer index, module suffix) of an LLM decoder-layer parameter name; None for any other
    (embeddings, lm_head, encoder, adaptor)."""
    match = DECODER_LAYER_NAME.search(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


__all__ = ["DECODER_LAYER_NAME", "layer_and_module"]
