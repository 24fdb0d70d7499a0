"""Strict safetensors header parser.

Layout: 8 bytes little-endian u64 ``N``, ``N`` bytes of UTF-8 JSON, then the data region.
Each JSON entry maps a tensor name to ``dtype``, ``shape`` and ``data_offsets`` (relative to
the data region); the optional ``__metadata__`` entry maps strings to strings.

Validation follows the reference implementation: offsets must tile the data region exactly
(no overlap, no hole, nothing after the last tensor), each tensor's byte length must equal
its element count times its dtype size, and the file must be long enough.  A hostile header
is rejected before anything proportional to its claims is allocated.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from loader.errors import SafetensorsFormatError

# The reference implementation refuses headers above 100 MB; so do we, which also bounds the
# memory a hostile length prefix can make us allocate.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class DType:
    """A safetensors dtype: its name, size in bytes and the torch dtype attribute name."""

    name: str
    itemsize: int
    torch_name: str | None


# Every dtype the safetensors format defines.  Those without a torch equivalent (sub-byte
# floats) are known, so that the error says "not supported by torch" rather than "unknown".
_ALL_DTYPES: tuple[DType, ...] = (
    DType("BOOL", 1, "bool"),
    DType("U8", 1, "uint8"),
    DType("I8", 1, "int8"),
    DType("U16", 2, "uint16"),
    DType("I16", 2, "int16"),
    DType("F16", 2, "float16"),
    DType("BF16", 2, "bfloat16"),
    DType("U32", 4, "uint32"),
    DType("I32", 4, "int32"),
    DType("F32", 4, "float32"),
    DType("U64", 8, "uint64"),
    DType("I64", 8, "int64"),
    DType("F64", 8, "float64"),
    DType("C64", 8, "complex64"),
    DType("F8_E4M3", 1, "float8_e4m3fn"),
    DType("F8_E5M2", 1, "float8_e5m2"),
    DType("F8_E4M3FNUZ", 1, "float8_e4m3fnuz"),
    DType("F8_E5M2FNUZ", 1, "float8_e5m2fnuz"),
    DType("F8_E8M0", 1, "float8_e8m0fnu"),
    DType("F4", 0, None),
    DType("F6_E2M3", 0, None),
    DType("F6_E3M2", 0, None),
)
KNOWN_DTYPES: dict[str, DType] = {d.name: d for d in _ALL_DTYPES}


def torch_dtype(name: str) -> torch.dtype:
    """Return the torch dtype for a safetensors dtype name.

    Raises:
        KeyError: the name is unknown or this torch build lacks the dtype.
    """
    d = KNOWN_DTYPES[name]
    if d.torch_name is None or not hasattr(torch, d.torch_name):
        raise KeyError(name)
    value = getattr(torch, d.torch_name)
    assert isinstance(value, torch.dtype)
    return value


def supported_dtypes() -> list[str]:
    """Names of the safetensors dtypes this torch build can represent."""
    out = []
    for d in _ALL_DTYPES:
        try:
            torch_dtype(d.name)
        except KeyError:
            continue
        out.append(d.name)
    return out


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry; ``start``/``end`` are relative to the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def itemsize(self) -> int:
        return KNOWN_DTYPES[self.dtype].itemsize

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)


@dataclass(frozen=True)
class Header:
    """A parsed and validated header; ``tensors`` are in file (offset) order."""

    path: str
    header_len: int
    file_size: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None
    raw: bytes = field(repr=False)

    @property
    def data_offset(self) -> int:
        """Absolute file offset where the data region begins."""
        return 8 + self.header_len

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_offset


def _fail(path: str, msg: str) -> SafetensorsFormatError:
    return SafetensorsFormatError(msg, path=path)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(path: str, prefix: bytes, header: bytes, file_size: int) -> Header:
    """Validate a header given its raw bytes.

    Args:
        path: file name used in error messages.
        prefix: the first 8 bytes of the file.
        header: the ``N`` header bytes that follow.
        file_size: total size of the file in bytes.

    Raises:
        SafetensorsFormatError: anything about the header or the sizes is wrong.
    """
    if len(prefix) < 8:
        raise _fail(path, f"file is {file_size} bytes, too small for the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    check_header_len(path, n, file_size)
    if len(header) != n:
        raise _fail(path, f"file truncated inside the header ({len(header)} of {n} bytes)")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"header is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.startswith("{"):
        raise _fail(path, "header is not a JSON object (does not start with '{')")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise _fail(path, "header JSON is nested too deeply") from None
    except ValueError as e:
        raise _fail(path, f"header is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _fail(path, "header is not a JSON object")

    metadata: dict[str, str] | None = None
    data_size = file_size - 8 - n
    entries: list[TensorInfo] = []
    for name, entry in obj.items():
        if name == METADATA_KEY:
            metadata = _parse_metadata(path, entry)
            continue
        entries.append(_parse_entry(path, name, entry, data_size))

    entries.sort(key=lambda t: (t.start, t.end))
    pos = 0
    for t in entries:
        if t.start < pos:
            raise _fail(
                path,
                f"tensor {t.name!r} data_offsets [{t.start}, {t.end}] overlap "
                f"the previous tensor (which ends at {pos})",
            )
        if t.start > pos:
            raise _fail(
                path,
                f"hole in the data region before tensor {t.name!r}: "
                f"bytes [{pos}, {t.start}) belong to no tensor",
            )
        pos = t.end
    if pos != data_size:
        raise _fail(
            path,
            f"data region has {data_size} bytes but tensors cover {pos}: "
            "trailing bytes after the last tensor",
        )
    return Header(path, n, file_size, tuple(entries), metadata, bytes(header))


def check_header_len(path: str, n: int, file_size: int) -> None:
    """Reject a header length before reading (and allocating) it.

    Raises:
        SafetensorsFormatError: the length exceeds the file or the 100 MB cap.
    """
    if n > file_size - 8:
        raise _fail(path, f"header length {n} goes beyond the end of the file ({file_size} bytes)")
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n < 2:
        raise _fail(path, f"header length {n} is too small for a JSON object")


def _parse_metadata(path: str, entry: object) -> dict[str, str]:
    if not isinstance(entry, dict):
        raise _fail(path, "__metadata__ is not a JSON object")
    for k, v in entry.items():
        if not isinstance(v, str):
            raise _fail(path, f"__metadata__ value of {k!r} is not a string")
    return dict(entry)


def _parse_entry(path: str, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _fail(path, f"entry {name!r} is not a JSON object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise _fail(path, f"tensor {name!r} lacks {key!r}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in KNOWN_DTYPES:
        raise _fail(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    try:
        torch_dtype(dtype)
    except KeyError:
        raise _fail(
            path,
            f"tensor {name!r} has dtype {dtype}, which torch {torch.__version__} cannot represent",
        ) from None
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise _fail(path, f"tensor {name!r} shape {shape!r} is not a list of non-negative ints")
    offs = entry["data_offsets"]
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) and o >= 0 for o in offs):
        raise _fail(path, f"tensor {name!r} data_offsets {offs!r} are not two non-negative ints")
    start, end = offs
    if end < start:
        raise _fail(path, f"tensor {name!r} data_offsets [{start}, {end}] end before they start")
    if end > data_size:
        raise _fail(
            path,
            f"tensor {name!r} data_offsets [{start}, {end}] are out of bounds: "
            f"the data region has {data_size} bytes (file truncated?)",
        )
    numel = 0 if 0 in shape else 1
    for s in shape:
        if numel == 0 or numel > data_size:
            # Stop early: a hostile shape could otherwise build an enormous int.
            break
        numel *= s
    expected = numel * KNOWN_DTYPES[dtype].itemsize
    if expected != end - start:
        raise _fail(
            path,
            f"tensor {name!r} data_offsets [{start}, {end}] hold {end - start} "
            f"bytes but shape {shape} x {dtype} needs {expected}",
        )
    return TensorInfo(name, dtype, tuple(shape), start, end)


def read_header(path: str | os.PathLike[str], fd: int | None = None) -> Header:
    """Read and validate the header of a safetensors file.

    Args:
        path: the file (also used in error messages).
        fd: an already open descriptor to read from instead of opening ``path``.

    Raises:
        SafetensorsFormatError: the header is invalid.
        OSError: the file cannot be read.
    """
    spath = os.fspath(path)
    own = fd is None
    if fd is None:
        fd = os.open(spath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        prefix = os.pread(fd, 8, 0)
        if len(prefix) < 8:
            raise _fail(spath, f"file is {size} bytes, too small for the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        check_header_len(spath, n, size)
        chunks = []
        got = 0
        while got < n:
            b = os.pread(fd, n - got, 8 + got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return parse_header(spath, prefix, b"".join(chunks), size)
    finally:
        if own:
            os.close(fd)


def describe(header: Header) -> Mapping[str, Any]:
    """A JSON-friendly summary of a header, used by ``python -m loader inspect``."""
    return {
        "path": header.path,
        "header_bytes": header.header_len,
        "file_bytes": header.file_size,
        "metadata": header.metadata or {},
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "offsets": [header.data_offset + t.start, header.data_offset + t.end],
            }
            for t in header.tensors
        ],
    }
