"""Header parser: every rejection names the file and the problem; fuzzed headers never crash."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import SafetensorsFormatError
from loader.format import (
    KNOWN_DTYPES,
    MAX_HEADER_BYTES,
    parse_header,
    read_header,
    supported_dtypes,
)


def build(header: dict[str, Any] | bytes, data: bytes = b"", n: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


def parse(blob: bytes, path: str = "/m/x.safetensors") -> Any:
    n = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
    return parse_header(path, blob[:8], blob[8 : 8 + n], len(blob))


def entry(dtype: str, shape: list[int], a: object, b: object) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}


def test_valid_header_with_metadata() -> None:
    blob = build({"__metadata__": {"format": "pt"}, "w": entry("F32", [2, 2], 0, 16)}, b"\0" * 16)
    h = parse(blob)
    assert h.metadata == {"format": "pt"}
    assert [(t.name, t.shape, t.start, t.end) for t in h.tensors] == [("w", (2, 2), 0, 16)]
    assert h.data_offset == len(blob) - 16


def test_tensors_sorted_by_offset_regardless_of_json_order() -> None:
    blob = build({"b": entry("U8", [3], 3, 6), "a": entry("U8", [3], 0, 3)}, b"abcdef")
    assert [t.name for t in parse(blob).tensors] == ["a", "b"]


def test_every_supported_dtype_parses() -> None:
    names = supported_dtypes()
    for must in (
        "BOOL",
        "U8",
        "I8",
        "I16",
        "F16",
        "BF16",
        "I32",
        "F32",
        "F64",
        "I64",
        "F8_E4M3",
        "F8_E5M2",
        "C64",
        "U16",
        "U32",
        "U64",
    ):
        assert must in names
    for name in names:
        size = KNOWN_DTYPES[name].itemsize
        h = parse(build({"t": entry(name, [3], 0, 3 * size)}, b"\0" * (3 * size)))
        assert h.tensors[0].torch_dtype.itemsize == size


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"\x01\x02", "too small"),
        (build(b"{}", n=1000), "beyond the end of the file"),
        (build(b'{"a":\xff}'), "UTF-8"),
        (build(b"{not json}"), "not valid JSON"),
        (build(b"[1, 2]"), "not a JSON object"),
        (build({"t": entry("Q7", [1], 0, 1)}, b"\0"), "unknown dtype"),
        (build({"t": entry("F4", [2], 0, 1)}, b"\0"), "cannot represent"),
        (build({"t": entry("U8", [4], 0, 4)}, b"\0\0"), "out of bounds"),
        (build({"t": entry("F32", [2], 0, 4)}, b"\0" * 4), "needs 8"),
        (build({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}, b"\0" * 6), "overlap"),
        (build({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 3, 5)}, b"\0" * 5), "hole"),
        (build({"a": entry("U8", [2], 0, 2)}, b"\0" * 5), "trailing"),
        (build({"a": entry("U8", [2], 2, 0)}, b"\0" * 2), "end before"),
        (build({"a": {"dtype": "U8", "shape": [1]}}, b"\0"), "lacks 'data_offsets'"),
        (build({"a": entry("U8", [-1], 0, 0)}), "non-negative"),
        (build({"a": entry("U8", [True], 0, 1)}, b"\0"), "non-negative ints"),
        (build({"a": entry("U8", [1], 0.0, 1)}, b"\0"), "two non-negative ints"),
        (build({"__metadata__": {"k": 1}}), "not a string"),
        (build(b'{"a": 1, "a": 2}'), "duplicate key"),
        (build(b"{" * 50000 + b"}" * 50000), "JSON"),
        (build({"a": entry("U8", [2**64, 2**64], 0, 1)}, b"\0"), "needs"),
    ],
)
def test_rejections_name_file_and_problem(blob: bytes, needle: str) -> None:
    with pytest.raises(SafetensorsFormatError) as ei:
        parse(blob)
    assert "/m/x.safetensors" in str(ei.value)
    assert needle in str(ei.value)
    assert ei.value.path == "/m/x.safetensors"


def test_zero_sized_dim_with_huge_other_dim_is_valid() -> None:
    h = parse(build({"a": entry("F32", [2**70, 0], 0, 0)}))
    assert h.tensors[0].nbytes == 0


def test_read_header_rejects_huge_length_without_allocating(tmp_path: Path) -> None:
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(SafetensorsFormatError, match="beyond the end"):
        read_header(p)
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        f.truncate(MAX_HEADER_BYTES + 100)  # sparse: costs no disk
    with pytest.raises(SafetensorsFormatError, match="limit"):
        read_header(big)


def test_truncated_file_detected(tmp_path: Path) -> None:
    blob = build({"a": entry("F32", [1024], 0, 4096)}, b"\0" * 4096)
    p = tmp_path / "t.safetensors"
    p.write_bytes(blob[:-10])
    with pytest.raises(SafetensorsFormatError, match=r"t\.safetensors.*out of bounds"):
        read_header(p)
    p.write_bytes(blob[:20])
    with pytest.raises(SafetensorsFormatError, match="beyond the end"):
        read_header(p)


def test_matches_safetensors_writer(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "s.safetensors"
    save_file(
        {"x": torch.zeros(3, 5, dtype=torch.bfloat16), "y": torch.ones(7)},
        str(p),
        metadata={"a": "b"},
    )
    h = read_header(p)
    assert {t.name: (t.dtype, t.shape) for t in h.tensors} == {
        "x": ("BF16", (3, 5)),
        "y": ("F32", (7,)),
    }
    assert h.metadata == {"a": "b"}
    assert h.data_offset % 8 == 0


# ---------------------------------------------------------------- fuzzing

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
json_val = st.recursive(
    json_leaf,
    lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)
    ),
    max_leaves=20,
)
dtype_s = st.one_of(st.sampled_from(sorted(KNOWN_DTYPES)), st.text(max_size=6))
shape_s = st.one_of(st.lists(st.integers(-2, 2**40), max_size=4), json_val)
offs_s = st.one_of(st.lists(st.integers(-5, 2**40), min_size=0, max_size=3), json_val)
entry_s = st.one_of(
    st.fixed_dictionaries({"dtype": dtype_s, "shape": shape_s, "data_offsets": offs_s}),
    json_val,
)
header_s = st.dictionaries(
    st.one_of(st.just("__metadata__"), st.text(max_size=6)), entry_s, max_size=6
)
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _check(blob: bytes) -> None:
    try:
        h = parse(blob)
    except SafetensorsFormatError as e:
        assert "/m/x.safetensors" in str(e)
        return
    # Anything accepted must be internally consistent.
    pos = 0
    for t in h.tensors:
        assert t.start == pos and t.end >= t.start
        pos = t.end
    assert h.data_offset + pos == h.file_size


@FUZZ
@given(header_s, st.binary(max_size=64))
def test_fuzz_structured_headers(header: dict[str, Any], data: bytes) -> None:
    _check(build(json.dumps(header).encode(), data))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(blob: bytes) -> None:
    _check(blob)


@FUZZ
@given(st.binary(min_size=1, max_size=200), st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_fuzz_raw_header_and_length(raw: bytes, n: int, data: bytes) -> None:
    _check(build(raw, data, n=n if n % 3 else None))


@FUZZ
@given(st.integers(0, 40), st.data())
def test_fuzz_mutated_valid_file(seed: int, data: st.DataObject) -> None:
    hdr = {
        f"t{i}": entry(
            "F16",
            [i + 1],
            sum(2 * (j + 1) for j in range(i)),
            sum(2 * (j + 1) for j in range(i + 1)),
        )
        for i in range(4)
    }
    blob = bytearray(build(hdr, bytes(20)))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    _check(bytes(blob[: cut if seed % 2 else len(blob)]))
