"""The loader benchmark stays fair: every method returns every tensor it loaded, alive, equal
to the file's bytes, each in memory of its own that the method owns (not a file mapping, not a
buffer shared with another tensor).  A harness that drops or aliases tensors skips the cost of
fresh memory, which is most of the cost of a CPU load on these VMs."""

from __future__ import annotations

import ctypes
import gc
import importlib
import itertools
import json
import mmap
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import save_file

from tests.loader_testutil import raw_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import loader_methods as lm

# The import each peer needs; a peer that is not installed is skipped, naming it.
NEEDS = {
    "safetensors": "safetensors",
    "fastsafetensors": "fastsafetensors",
    "runai": "runai_model_streamer",
    "tensorizer": "tensorizer",
}
OWNING = [
    "loader",
    "safetensors",
    "fastsafetensors",
    "runai",
    "tensorizer",
    "bound-direct-fresh",
    "bound-copy-fresh",
]


def _shards() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)

    def bf16(*shape: int) -> torch.Tensor:
        return torch.randint(-32768, 32767, shape, dtype=torch.int16, generator=g).view(
            torch.bfloat16
        )

    # Tensors of 1 MiB and more take the loader's own-allocation path, smaller ones its
    # staging path; two shards, like a real checkpoint.
    return [
        {"a.big": bf16(1024, 1024), "a.small": bf16(7), "a.mid": torch.rand(300, 301, generator=g)},
        {"b.big": bf16(2048, 600), "b.bytes": torch.randint(0, 255, (4097,), generator=g).byte()},
    ]


def _write(base: Path) -> tuple[lm.Checkpoint, dict[str, str]]:
    paths = []
    for i, tensors in enumerate(_shards()):
        p = base / f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(tensors, str(p))
        paths.append(str(p))
    tfile = None
    try:
        from tensorizer import TensorSerializer
    except ImportError:
        pass
    else:
        tfile = str(base / "model.tensors")
        ser = TensorSerializer(tfile)
        ser.write_state_dict({k: v for s in _shards() for k, v in s.items()})
        ser.close()
    expected = {}
    for path in paths:
        # Straight from the file's bytes, independently of every method under test.
        data = Path(path).read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        header.pop("__metadata__", None)
        for name, h in header.items():
            lo, hi = h["data_offsets"]
            expected[name] = xxhash.xxh3_64_hexdigest(data[8 + n + lo : 8 + n + hi])
        expected[path] = xxhash.xxh3_64_hexdigest(data)
    return lm.Checkpoint(paths, tfile), expected


@pytest.fixture(scope="module")
def disk_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[lm.Checkpoint, dict[str, str]]:
    return _write(tmp_path_factory.mktemp("fair"))


@pytest.fixture(scope="module")
def tmpfs_checkpoint() -> Iterator[tuple[lm.Checkpoint, dict[str, str]]]:
    base = Path(f"/dev/shm/bench-fairness-{os.getpid()}")
    base.mkdir()
    try:
        yield _write(base)
    finally:
        for p in base.iterdir():
            p.unlink()
        base.rmdir()


@pytest.fixture(params=["disk", "tmpfs"])
def checkpoint(request: pytest.FixtureRequest) -> tuple[lm.Checkpoint, dict[str, str]]:
    """The same checkpoint on a disk file system and on tmpfs."""
    found: tuple[lm.Checkpoint, dict[str, str]] = request.getfixturevalue(
        f"{request.param}_checkpoint"
    )
    return found


def _mappings() -> list[tuple[int, int, str]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append((lo, hi, parts[5] if len(parts) > 5 else ""))
    return out


def _span(v: object) -> tuple[int, int]:
    if isinstance(v, torch.Tensor):
        return v.data_ptr(), v.data_ptr() + v.numel() * v.element_size()
    assert isinstance(v, mmap.mmap)
    lo = ctypes.addressof(ctypes.c_char.from_buffer(v))
    return lo, lo + len(v)


def _backing(addr: int, maps: list[tuple[int, int, str]]) -> str:
    for lo, hi, name in maps:
        if lo <= addr < hi:
            return name
    raise AssertionError(f"address {addr:#x} is in no mapping of this process")


def _digest(v: object, name: str) -> str:
    if isinstance(v, torch.Tensor):
        return xxhash.xxh3_64_hexdigest(raw_bytes(v))
    assert isinstance(v, mmap.mmap)
    # A bound's buffer is its whole file, rounded up to whole pages.
    return xxhash.xxh3_64_hexdigest(memoryview(v)[: os.path.getsize(name)])


def _load(method: str, ck: lm.Checkpoint) -> lm.Loaded:
    if method in NEEDS:
        pytest.importorskip(NEEDS[method], reason=f"peer {method} is not installed")
    if method == "tensorizer" and ck.tensorizer is None:
        pytest.skip("tensorizer is not installed")
    keep = lm.METHODS[method](ck)
    # Whatever the method freed is handed out again, and scribbled over: a tensor that is
    # not really kept would now read differently.
    gc.collect()
    scratch = [torch.full((1 << 20,), 0x5A, dtype=torch.uint8) for _ in range(16)]
    del scratch
    return keep


@pytest.mark.parametrize("method", OWNING)
def test_every_tensor_kept_in_owned_memory(
    checkpoint: tuple[lm.Checkpoint, dict[str, str]], method: str
) -> None:
    ck, expected = checkpoint
    keep = _load(method, ck)
    bound = method.startswith("bound-") and method != "bound-io-only"
    want = set(ck.paths) if bound else {k for k in expected if k not in ck.paths}
    assert set(keep) == want
    maps = _mappings()
    spans = []
    for name, v in keep.items():
        assert _digest(v, name) == expected[name], f"{method}: {name} differs from the file"
        lo, hi = _span(v)
        backing = _backing(lo, maps)
        assert not any(backing.endswith(Path(p).name) for p in ck.paths), (
            f"{method}: {name} is a view of the file {backing}, not memory of its own"
        )
        spans.append((lo, hi, name))
    spans.sort()
    for (_, hi, a), (lo, _, b) in itertools.pairwise(spans):
        assert hi <= lo, f"{method}: {a} and {b} share memory"
    assert lm.loaded_bytes(keep) >= sum(
        v.numel() * v.element_size() for s in _shards() for v in s.values()
    )


def test_views_are_reported_as_views(
    tmpfs_checkpoint: tuple[lm.Checkpoint, dict[str, str]],
) -> None:
    """``copy=False`` is the one method that owns nothing: on tmpfs its tensors are views of
    the files, which the ownership check above must see (so it can fail)."""
    ck, expected = tmpfs_checkpoint
    keep = _load("loader-views", ck)
    maps = _mappings()
    for name, t in keep.items():
        assert _digest(t, name) == expected[name]
        if t.numel():
            backing = _backing(t.data_ptr(), maps)
            assert any(backing.endswith(Path(p).name) for p in ck.paths), (name, backing)


def test_io_only_bound_keeps_nothing(
    disk_checkpoint: tuple[lm.Checkpoint, dict[str, str]],
) -> None:
    # O_DIRECT, which this bound uses, needs a disk file system.
    ck, _ = disk_checkpoint
    sizes = {p: os.path.getsize(p) for p in ck.paths}
    assert lm.METHODS["bound-io-only"](ck) == sizes


def test_every_method_is_checked() -> None:
    """A method added to the harness is added here too (or it is not checked for fairness)."""
    # instanttensor and bound-h2d need CUDA: tests/integration/test_loader_cuda.py checks
    # them, with the other peers, on a GPU.
    checked = set(OWNING) | {"loader-views", "bound-io-only", "instanttensor", "bound-h2d"}
    assert set(lm.METHODS) == checked
    assert importlib.import_module("loader_methods") is lm
