"""Distributed loading over gloo: each byte read once, every rank gets every tensor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

import loader
from tests.loader_testutil import digest, random_tensor


def _rank_main(rank: int, world: int, root: str, paths: list[str], copy: bool) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world
    )
    try:
        out = {}
        with loader.safe_open(
            paths, process_group=dist.group.WORLD, copy=copy, chunk_size="1M", threads=2
        ) as f:
            for name, t in f.tensors():
                out[name] = list(map(str, digest(t)))
            stats = f.last_stats
            assert stats is not None
            single = f.get_tensor("s1.big")  # collective too: every rank asks
            out["__single__"] = list(map(str, digest(single)))
        Path(root, f"rank{rank}.json").write_text(
            json.dumps({"tensors": out, "read": stats.bytes_read})
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[str], dict[str, list[str]]]:
    d = tmp_path_factory.mktemp("dist")
    g = torch.Generator().manual_seed(4)
    paths, expected = [], {}
    for s in range(2):
        shard = {f"s{s}.w{i}": random_tensor(torch.bfloat16, (97 + i, 1031), g) for i in range(6)}
        shard.update({f"s{s}.tiny{i}": random_tensor(torch.float32, (i,), g) for i in range(50)})
        shard[f"s{s}.big"] = random_tensor(torch.float16, (1500, 1024), g)
        p = d / f"m{s}.safetensors"
        save_file(shard, str(p))
        paths.append(str(p))
        expected.update({k: list(map(str, digest(v))) for k, v in shard.items()})
    return paths, expected


@pytest.mark.parametrize(
    ("world", "copy"), [(2, True), (3, False), pytest.param(4, True, marks=pytest.mark.slow)]
)
def test_gloo_ranks_split_reading(
    tmp_path: Path, checkpoint: tuple[list[str], dict[str, object]], world: int, copy: bool
) -> None:
    paths, expected = checkpoint
    mp.spawn(_rank_main, args=(world, str(tmp_path), paths, copy), nprocs=world, join=True)
    data_bytes = sum(os.path.getsize(p) for p in paths)
    reads = []
    for r in range(world):
        res = json.loads(Path(tmp_path, f"rank{r}.json").read_text())
        single = res["tensors"].pop("__single__")
        assert res["tensors"] == expected
        assert single == expected["s1.big"]
        reads.append(res["read"])
    # Each byte is read once (plus page-alignment slack), split evenly.
    assert data_bytes * 0.99 <= sum(reads) <= data_bytes + world * 2 * (1 << 20)
    assert max(reads) - min(reads) <= 2 * (1 << 20) + 4096


def test_group_without_init_is_a_named_error(
    checkpoint: tuple[list[str], dict[str, object]],
) -> None:
    paths, _ = checkpoint
    assert not dist.is_initialized()
    with pytest.raises(loader.ConfigError, match="not initialised"):
        loader.safe_open(paths, process_group=True)
