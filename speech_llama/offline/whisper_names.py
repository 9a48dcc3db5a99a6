"""Map CTranslate2 Whisper tensor names onto transformers' ``WhisperForConditionalGeneration``.

``encoder/conv{1,2}`` → ``model.encoder.conv{1,2}``; ``…/layer_i/self_attention/linear_0`` is the
fused [q; k; v] (``linear_1`` the output), ``…/attention/linear_0|1|2`` the decoder's cross
attention (q, fused [k; v], out), ``ffn/linear_0|1`` = fc1|fc2, and the ``layer_norm``s map to
HF's norms. The sizes are read off the shapes, so any Whisper size converts; a right mapping
leaves no tensor unused and no key missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .ct2_format import CTranslate2FormatError, CTranslate2Model

CT2_GELU_ACTIVATION = 3  # ctranslate2.specs.common_spec.Activation.GELU


@dataclass(frozen=True)
class WhisperDimensions:
    """Architecture sizes read off the tensor shapes, so any Whisper size converts."""

    d_model: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int


def whisper_dimensions(model: CTranslate2Model) -> WhisperDimensions:
    """Read the architecture off a CTranslate2 Whisper model and check its fixed flags."""
    _check_whisper_flags(model)
    conv1 = model.get("encoder/conv1/weight")  # (d_model, n_mels, kernel 3)
    return WhisperDimensions(
        d_model=conv1.shape[0],
        num_mel_bins=conv1.shape[1],
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        vocab_size=model.get("decoder/embeddings/weight").shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
    )


def _check_whisper_flags(model: CTranslate2Model) -> None:
    """Refuse models that transformers' Whisper cannot represent, rather than convert wrongly."""
    if model.spec_name != "WhisperSpec":
        raise CTranslate2FormatError(
            f"{model.source}: spec is {model.spec_name!r}, expected 'WhisperSpec'"
        )
    quantised = sorted(name for name in model.variables if name.endswith("_scale"))
    if quantised:
        raise CTranslate2FormatError(
            f"{model.source}: int8-quantised CTranslate2 models are not supported (found"
            f" {quantised[0]!r}); use a float16/float32 export"
        )
    expectations = {
        "decoder/activation": CT2_GELU_ACTIVATION,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
    }
    for name, expected in expectations.items():
        if name in model.variables and model.scalar(name) != expected:
            raise CTranslate2FormatError(
                f"{model.source}: {name} = {model.scalar(name)}, but Whisper needs {expected}"
            )


def _count_layers(model: CTranslate2Model, stack: str) -> int:
    count = 0
    while f"{stack}/layer_{count}/ffn/linear_0/weight" in model.variables:
        count += 1
    if count == 0:
        raise CTranslate2FormatError(f"{model.source}: no {stack} layers found")
    return count


class _WhisperStateDictBuilder:
    """Collects HF tensors from CTranslate2 variables and remembers which ones it used.

    Anything left unused at the end is an error: a silently dropped tensor would give a model
    that loads but transcribes badly.
    """

    def __init__(self, model: CTranslate2Model):
        self.model = model
        self.used: set[str] = set()
        self.state_dict: dict[str, np.ndarray] = {}

    def take(self, ct2_name: str) -> np.ndarray:
        self.used.add(self.model.aliases.get(ct2_name, ct2_name))
        return self.model.get(ct2_name)

    def put(self, hf_name: str, array: np.ndarray) -> None:
        self.state_dict[hf_name] = array

    def copy(self, hf_name: str, ct2_name: str) -> None:
        self.put(hf_name, self.take(ct2_name))

    def linear(self, hf_prefix: str, ct2_prefix: str) -> None:
        self.copy(f"{hf_prefix}.weight", f"{ct2_prefix}/weight")
        self.copy(f"{hf_prefix}.bias", f"{ct2_prefix}/bias")

    def layer_norm(self, hf_prefix: str, ct2_prefix: str) -> None:
        self.copy(f"{hf_prefix}.weight", f"{ct2_prefix}/gamma")
        self.copy(f"{hf_prefix}.bias", f"{ct2_prefix}/beta")

    def split_linear(self, hf_prefixes: Sequence[str], ct2_prefix: str) -> None:
        """A fused projection ([q; k; v] or [k; v]) stacked along the output dimension.

        HF's ``k_proj`` has no bias: a key bias adds the same q·b_k to every score of a query,
        which softmax cancels, so CTranslate2 stores zeros there and we drop it.
        """
        weights = np.split(self.take(f"{ct2_prefix}/weight"), len(hf_prefixes), axis=0)
        biases = np.split(self.take(f"{ct2_prefix}/bias"), len(hf_prefixes), axis=0)
        for hf_prefix, weight, bias in zip(hf_prefixes, weights, biases):
            self.put(f"{hf_prefix}.weight", weight)
            if not hf_prefix.endswith("k_proj"):
                self.put(f"{hf_prefix}.bias", bias)

    def unused_tensors(self) -> list[str]:
        return sorted(
            name
            for name, array in self.model.variables.items()
            if array.ndim > 0 and name not in self.used
        )


def whisper_state_dict(model: CTranslate2Model) -> dict[str, np.ndarray]:
    """HF ``WhisperForConditionalGeneration`` state dict (numpy, stored dtypes) from CT2.

    Raises:
        CTranslate2FormatError: a needed variable is missing, or a stored tensor has no place
            in the HF model.
    """
    dims = whisper_dimensions(model)
    builder = _WhisperStateDictBuilder(model)
    _map_encoder(builder, dims.encoder_layers)
    _map_decoder(builder, dims.decoder_layers)
    unused = builder.unused_tensors()
    if unused:
        raise CTranslate2FormatError(
            f"{model.source}: {len(unused)} tensors have no transformers counterpart:"
            f" {unused[:5]}"
        )
    return builder.state_dict


def _map_encoder(builder: _WhisperStateDictBuilder, n_layers: int) -> None:
    for conv in ("conv1", "conv2"):
        builder.linear(f"model.encoder.{conv}", f"encoder/{conv}")
    builder.copy("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    for i in range(n_layers):
        hf, ct2 = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        _map_self_attention(builder, hf, ct2)
        _map_ffn(builder, hf, ct2)
    builder.layer_norm("model.encoder.layer_norm", "encoder/layer_norm")


def _map_decoder(builder: _WhisperStateDictBuilder, n_layers: int) -> None:
    builder.copy("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    builder.copy("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    for i in range(n_layers):
        hf, ct2 = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        _map_self_attention(builder, hf, ct2)
        _map_cross_attention(builder, hf, ct2)
        _map_ffn(builder, hf, ct2)
    builder.layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    # transformers' Whisper always ties the output projection to the token embeddings; CT2
    # stores it as an alias of them, and a separate, different copy could not be represented.
    projection = builder.take("decoder/projection/weight")
    if not np.array_equal(projection, builder.model.get("decoder/embeddings/weight")):
        raise CTranslate2FormatError(
            f"{builder.model.source}: decoder/projection/weight differs from the token"
            " embeddings; transformers' Whisper needs them tied"
        )
    builder.put("proj_out.weight", projection)


def _map_self_attention(builder: _WhisperStateDictBuilder, hf: str, ct2: str) -> None:
    attn = f"{hf}.self_attn"
    builder.split_linear(
        [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"], f"{ct2}/self_attention/linear_0"
    )
    builder.linear(f"{attn}.out_proj", f"{ct2}/self_attention/linear_1")
    builder.layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")


def _map_cross_attention(builder: _WhisperStateDictBuilder, hf: str, ct2: str) -> None:
    attn = f"{hf}.encoder_attn"
    builder.linear(f"{attn}.q_proj", f"{ct2}/attention/linear_0")
    builder.split_linear([f"{attn}.k_proj", f"{attn}.v_proj"], f"{ct2}/attention/linear_1")
    builder.linear(f"{attn}.out_proj", f"{ct2}/attention/linear_2")
    builder.layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")


def _map_ffn(builder: _WhisperStateDictBuilder, hf: str, ct2: str) -> None:
    builder.linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
    builder.linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
    builder.layer_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
