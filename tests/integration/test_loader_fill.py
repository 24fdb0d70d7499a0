"""Fresh destinations filled without zeroing (userfaultfd), and every fallback around it."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import save_file

import loader
import loader.pipeline
from loader.errors import LoaderIOError
from loader.fill import FreshFiller
from loader.memory import PAGE, HostBuffer
from tests.loader_testutil import digest, random_tensor

SHM = Path("/dev/shm")


@pytest.fixture
def fresh_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fill paths run wherever destinations are 4 KiB pages; force that here."""
    monkeypatch.setattr(loader.pipeline, "HUGE_DESTINATIONS", False)


def _model(path: Path) -> dict[str, str]:
    g = torch.Generator().manual_seed(11)
    tensors = {f"w{i}": random_tensor(torch.bfloat16, (257 + i, 4099), g) for i in range(5)}
    tensors["tiny"] = random_tensor(torch.float32, (3,), g)
    save_file(tensors, str(path))
    return {k: digest(v)[0] for k, v in tensors.items()}


def _load(path: Path, backend: str | None = None) -> tuple[dict[str, str], dict[str, int]]:
    with loader.safe_open(path, backend=backend, copy=True, chunk_size="1M", threads=3) as f:
        got = dict(f.tensors())
        assert f.last_stats is not None
        fills = dict(f.last_stats.fills)
    return {k: digest(v)[0] for k, v in got.items()}, fills


def test_filler_copies_into_untouched_memory_which_is_ordinary_afterwards() -> None:
    filler = FreshFiller()
    if not filler.available:
        pytest.skip("this kernel or sandbox refuses userfaultfd")
    src = HostBuffer(64 * PAGE)
    src.mv[:] = os.urandom(64 * PAGE)
    dst = HostBuffer(64 * PAGE, huge=False)
    assert filler.register(dst.addr, dst.size)
    n = 64 * PAGE - 100
    assert filler.copy_registered(dst.addr, src.addr, n) == n
    filler.unregister(dst.addr, dst.size)
    assert xxhash.xxh3_64_hexdigest(dst.mv[:n]) == xxhash.xxh3_64_hexdigest(src.mv[:n])
    dst.mv[0:4] = b"edit"  # writable, ordinary memory again
    assert bytes(dst.mv[:4]) == b"edit"
    filler.close()


def test_filler_stops_at_a_page_already_present_and_the_rest_is_copied() -> None:
    filler = FreshFiller()
    if not filler.available:
        pytest.skip("this kernel or sandbox refuses userfaultfd")
    src = HostBuffer(16 * PAGE)
    src.mv[:] = os.urandom(16 * PAGE)
    dst = HostBuffer(16 * PAGE, huge=False)
    dst.mv[5 * PAGE] = 1  # touched before registration: the copy cannot allocate it
    assert filler.register(dst.addr, dst.size)
    done = filler.copy_registered(dst.addr, src.addr, dst.size)
    assert done == 5 * PAGE
    filler.unregister_from(dst.addr + done, dst.addr + dst.size)
    dst.mv[done:] = src.mv[done:]
    filler.unregister(dst.addr, dst.size)
    assert bytes(dst.mv) == bytes(src.mv)
    assert filler.fallbacks == 1


@pytest.mark.parametrize("uffd", ["1", "0"])
def test_tmpfs_copy_fills_fresh_memory_through_a_small_buffer(
    fresh_fill: None, monkeypatch: pytest.MonkeyPatch, uffd: str
) -> None:
    monkeypatch.setenv("LOADER_UFFD", uffd)
    path = SHM / f"tierfs-fill-{os.getpid()}.safetensors"
    try:
        want = _model(path)
        got, fills = _load(path)
        assert got == want
        # Without userfaultfd the kernel's copy fills the destination directly.
        assert set(fills) == ({"copy"} if uffd == "1" else {"read"})
    finally:
        path.unlink(missing_ok=True)


def test_cold_direct_reads_bounce_through_staging(fresh_fill: None, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    want = _model(path)
    got, fills = _load(path, backend="direct")
    assert got == want
    assert set(fills) == {"bounce"}


def test_page_cache_copy_is_filled_out_of_a_mapping(fresh_fill: None, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    want = _model(path)
    got, fills = _load(path, backend="buffered")
    assert got == want
    assert set(fills) == {"mapped"}


def test_huge_destinations_are_read_straight_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(loader.pipeline, "HUGE_DESTINATIONS", True)
    monkeypatch.setattr(loader.fill, "HUGE_DESTINATIONS", True)
    path = tmp_path / "m.safetensors"
    want = _model(path)
    got, fills = _load(path, backend="direct")
    assert got == want
    assert set(fills) == {"read"}


@pytest.mark.parametrize("where", ["tmpfs", "page cache"])
def test_file_cut_short_mid_load_is_an_error_not_a_crash(
    fresh_fill: None, tmp_path: Path, where: str
) -> None:
    # From the page cache the bytes are copied out of a mapping, where a file cut short
    # would kill a user-space copy with SIGBUS.
    base = SHM if where == "tmpfs" else tmp_path
    path = base / f"tierfs-fill-cut-{os.getpid()}.safetensors"
    try:
        _model(path)
        path.read_bytes()
        with loader.safe_open(path, copy=True, chunk_size="1M", threads=2) as f:
            assert f.backends[str(path)] == ("mmap" if where == "tmpfs" else "buffered")
            os.truncate(path, os.path.getsize(path) // 3)
            with pytest.raises(LoaderIOError) as e:
                dict(f.tensors())
        assert str(path) in str(e.value)
    finally:
        path.unlink(missing_ok=True)


def test_destinations_stay_usable_after_an_abandoned_load(fresh_fill: None) -> None:
    path = SHM / f"tierfs-fill-abandon-{os.getpid()}.safetensors"
    try:
        want = _model(path)
        with loader.safe_open(path, copy=True, chunk_size="1M", threads=3) as f:
            it = f.tensors()
            name, first = next(it)
            assert isinstance(it, Generator)
            it.close()  # the other tensors' buffers are unregistered, half filled
        assert digest(first)[0] == want[name]
        first.view(torch.uint8).reshape(-1)[: mmap.PAGESIZE].fill_(7)
    finally:
        path.unlink(missing_ok=True)


_PEAK_RSS = """
import sys, loader
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
loader.pipeline.HUGE_DESTINATIONS = loader.fill.HUGE_DESTINATIONS = False
before = hwm()
with loader.safe_open(sys.argv[1], copy=True, chunk_size="4M", threads=2) as f:
    kept = dict(f.tensors())
print(hwm() - before, sum(t.nbytes for t in kept.values()))
"""


@pytest.mark.parametrize("where", ["tmpfs", "page cache"])
def test_a_copy_from_memory_costs_the_model_once_in_rss(tmp_path: Path, where: str) -> None:
    # The source pages, mapped to be copied, would count in RSS on top of the copy.
    base = SHM if where == "tmpfs" else tmp_path
    path = base / f"tierfs-fill-rss-{os.getpid()}.safetensors"
    try:
        g = torch.Generator().manual_seed(5)
        save_file({f"w{i}": random_tensor(torch.int32, (4096, 1024), g) for i in range(24)}, path)
        path.read_bytes()  # in the page cache
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(path)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[2],
        ).stdout.split()
        added, model = int(out[0]), int(out[1])
        assert model == 24 * 4096 * 1024 * 4
        assert added < model * 1.25, f"peak RSS grew by {added >> 20} MiB for {model >> 20} MiB"
    finally:
        path.unlink(missing_ok=True)
