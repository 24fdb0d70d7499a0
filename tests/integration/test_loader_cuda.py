"""CUDA loads: staging ring, H2D stream, bounded host memory.  Skipped without CUDA."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xxhash
from safetensors.torch import save_file

import loader
from tests.loader_testutil import all_dtypes, digest, random_tensor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def ckpt(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    g = torch.Generator().manual_seed(1)
    d = {
        f"t{i}": random_tensor(dt, (33, 65), g)
        for i, dt in enumerate(all_dtypes())
        if dt != torch.float8_e8m0fnu
    }
    d["big"] = random_tensor(torch.bfloat16, (4096, 2048), g)
    d["scalar"] = torch.tensor(2.0)
    d["empty"] = torch.empty(0)
    p = tmp_path / "g.safetensors"
    save_file(d, str(p))
    return p, {k: digest(v) for k, v in d.items()}


@pytest.mark.parametrize("backend", ["direct", "buffered", "gds,direct"])
@pytest.mark.parametrize("device", [0, "cuda:0"])
def test_cuda_equality(
    ckpt: tuple[Path, dict[str, object]], backend: str, device: int | str
) -> None:
    p, expected = ckpt
    got = loader.load_file(p, device=device, backend=backend, chunk_size="1M")
    for v in got.values():
        assert v.device.type == "cuda"
    assert {k: digest(v) for k, v in got.items()} == expected


def test_host_memory_bounded_by_staging(ckpt: tuple[Path, dict[str, object]]) -> None:
    p, expected = ckpt
    with loader.safe_open(
        p, device="cuda:0", backend="direct", chunk_size="1M", staging_size="4M", threads=2
    ) as f:
        got = {k: digest(v) for k, v in f.tensors()}
        assert f._pool is not None
        assert f._pool.peak <= 4 << 20
    assert got == expected


def test_cuda_from_tmpfs_with_mmap(ckpt: tuple[Path, dict[str, object]]) -> None:
    p, expected = ckpt
    shm = Path("/dev/shm") / f"loader-cuda-{os.getpid()}.safetensors"
    shutil.copy(p, shm)
    try:
        got = loader.load_file(shm, device="cuda:0", backend="mmap", chunk_size="1M")
    finally:
        shm.unlink()
    assert {k: digest(v) for k, v in got.items()} == expected


def test_cuda_copy_false_tensors_are_right_when_consumed_in_turn(
    ckpt: tuple[Path, dict[str, object]],
) -> None:
    p, expected = ckpt
    with loader.safe_open(p, device="cuda:0", copy=False, chunk_size="1M") as f:
        got = {k: digest(v) for k, v in f.tensors()}
    assert got == expected


@pytest.mark.parametrize("backend", ["direct", "gds,direct"])
def test_cuda_verify_hashes_the_bytes_as_they_stream_past(
    ckpt: tuple[Path, dict[str, object]], backend: str
) -> None:
    p, expected = ckpt
    # What tierfs would publish in user.tierfs.xxh3, set on the resolved file directly.
    with loader.safe_open(p, device="cuda:0", backend=backend, verify=True) as f:
        f.files[0].rf.xxh3 = xxhash.xxh3_128_hexdigest(p.read_bytes())
        got = {k: digest(v) for k, v in f.tensors()}
    assert got == expected
    with loader.safe_open(p, device="cuda:0", backend=backend, verify=True) as f:
        f.files[0].rf.xxh3 = "0" * 32
        with pytest.raises(loader.IntegrityError, match=r"g\.safetensors"):
            list(f.tensors())


def _cuda_rank(rank: int, world: int, root: str, path: str, pg_backend: str) -> None:
    dev = rank if pg_backend == "nccl" else 0
    torch.cuda.set_device(dev)
    dist.init_process_group(
        pg_backend, init_method=f"file://{root}/rendezvous", rank=rank, world_size=world
    )
    try:
        with loader.safe_open(
            path, device=f"cuda:{dev}", process_group=dist.group.WORLD, chunk_size="1M"
        ) as f:
            out = {name: list(map(str, digest(t))) for name, t in f.tensors()}
            stats = f.last_stats
            assert stats is not None
        Path(root, f"rank{rank}.json").write_text(
            json.dumps({"tensors": out, "read": stats.bytes_read})
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "pg_backend",
    [
        "gloo",  # two ranks may share one GPU under gloo; this exercises device staging
        pytest.param(
            "nccl",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank"
            ),
        ),
    ],
)
def test_cuda_ranks_split_reading(
    tmp_path: Path, ckpt: tuple[Path, dict[str, object]], pg_backend: str
) -> None:
    p, expected = ckpt
    world = 2
    want = {k: [str(x) for x in v] for k, v in expected.items()}  # type: ignore[attr-defined]
    mp.spawn(_cuda_rank, args=(world, str(tmp_path), str(p), pg_backend), nprocs=world)
    reads = []
    for r in range(world):
        res = json.loads(Path(tmp_path, f"rank{r}.json").read_text())
        assert res["tensors"] == want
        reads.append(res["read"])
    assert sum(reads) <= p.stat().st_size + world * 2 * (1 << 20)
    assert min(reads) > 0


def _bench_methods() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import loader_methods

    return loader_methods


# The CUDA benchmark's peers and the import each needs; one not installed is skipped, named.
CUDA_PEERS = {
    "loader": "loader",
    "safetensors": "safetensors",
    "fastsafetensors": "fastsafetensors",
    "runai": "runai_model_streamer",
    "instanttensor": "instanttensor",
}


@pytest.mark.parametrize("method", sorted(CUDA_PEERS))
def test_bench_method_keeps_every_tensor_on_the_gpu_with_the_file_bytes(
    tmp_path: Path, method: str
) -> None:
    pytest.importorskip(CUDA_PEERS[method])
    lm = _bench_methods()
    # The dtypes every peer reads (the benchmark's checkpoint is bf16), not all of ours.
    g = torch.Generator().manual_seed(3)
    d = {
        "big": random_tensor(torch.bfloat16, (4096, 1024), g),
        "half": random_tensor(torch.float16, (333, 77), g),
        "norm": random_tensor(torch.float32, (4096,), g),
    }
    p = tmp_path / "peers.safetensors"
    save_file(d, str(p))
    expected = {k: digest(v) for k, v in d.items()}
    keep = lm.METHODS[method](lm.Checkpoint([str(p)], None, "cuda:0"))
    torch.cuda.synchronize()
    assert {k: v.device.type for k, v in keep.items()} == dict.fromkeys(expected, "cuda")
    assert {k: digest(v) for k, v in keep.items()} == expected


def test_bench_link_bound_keeps_fresh_gpu_memory_per_file(
    ckpt: tuple[Path, dict[str, object]],
) -> None:
    lm = _bench_methods()
    p, _ = ckpt
    keep = lm.bound_h2d(lm.Checkpoint([str(p)], None, "cuda:0"))
    torch.cuda.synchronize()
    assert list(keep) == [str(p)]
    assert keep[str(p)].device.type == "cuda"
    assert keep[str(p)].numel() == p.stat().st_size


def test_pinned_staging_pins_what_it_asks_for_page_aligned() -> None:
    from loader.memory import PAGE, HostBuffer

    def active() -> int:
        return int(torch.cuda.host_memory_stats().get("active_bytes.current", 0))

    before = active()
    buf = HostBuffer(8 << 20, pinned=True)
    assert buf.addr % PAGE == 0
    assert buf.size == 8 << 20
    # Not 16 MiB: the allocator rounds every request up to a power of two.
    assert active() - before == 8 << 20
