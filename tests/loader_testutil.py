"""Helpers for the loader tests: a byte-exact safetensors writer and per-tensor hashes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
import xxhash

from loader.format import KNOWN_DTYPES, supported_dtypes, torch_dtype

_BY_TORCH = {torch_dtype(n): n for n in supported_dtypes()}


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


Digest = tuple[str, torch.dtype, tuple[int, ...]]


def digest(t: torch.Tensor) -> Digest:
    """xxh3 of the bytes plus dtype and shape: what bitwise equality means here."""
    return xxhash.xxh3_64_hexdigest(raw_bytes(t)), t.dtype, tuple(t.shape)


def write_raw(
    path: Path,
    tensors: list[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
    pad_header: bool = False,
) -> None:
    """Write tensors in the given order, back to back, with no alignment padding.

    Unlike ``safetensors.torch.save_file`` this keeps offsets unaligned when asked to, and
    can write dtypes the safetensors Python binding does not map.
    """
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    pos = 0
    blobs = []
    for name, t in tensors:
        b = raw_bytes(t)
        header[name] = {
            "dtype": _BY_TORCH[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [pos, pos + len(b)],
        }
        blobs.append(b)
        pos += len(b)
    raw = json.dumps(header).encode()
    if pad_header:
        raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Random bits of any dtype (NaN patterns included: equality is bitwise)."""
    n = 1
    for s in shape:
        n *= s
    size = KNOWN_DTYPES[_BY_TORCH[dtype]].itemsize
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def all_dtypes() -> list[torch.dtype]:
    return list(_BY_TORCH)
