"""Read a CTranslate2 ``model.bin`` with numpy alone (no ctranslate2 package needed).

CTranslate2 model.bin layout (version 6, little-endian)::

    u32 version | string spec_name | u32 revision | u32 n_variables
    n_variables × (string name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes)
    u32 n_aliases | n_aliases × (string alias | string target)

where a string is a u16 length (counting a trailing NUL) followed by that many bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


class CTranslate2FormatError(ValueError):
    """The CTranslate2 file is truncated, corrupt, or not a model this converter understands."""


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
