"""CUDA loads: staging ring, H2D stream, bounded host memory.  Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
def test_cuda_equality(ckpt: tuple[Path, dict[str, object]], backend: str, device: object) -> None:
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
