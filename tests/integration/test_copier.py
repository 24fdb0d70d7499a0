"""The promotion copy: verified, atomic, and refusing anything that doesn't add up."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest
import xxhash

from tierfs.storage import copier
from tierfs.storage.copier import CopyCancelled, CopyError, CopyVerifyError, copy_file, hash_file

SIZES = [0, 1, 4095, 4096, 4097, (1 << 20) + 3, 3 * (1 << 20)]


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cold"
    d.mkdir()
    return d


@pytest.fixture
def tier_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tier"
    (d / ".tmp").mkdir(parents=True)
    return d


@pytest.mark.parametrize("size", SIZES)
def test_copy_is_byte_exact_read_only_and_hashed(
    source_dir: Path, tier_dir: Path, size: int
) -> None:
    data = os.urandom(size)
    src = source_dir / "f.bin"
    src.write_bytes(data)
    final = tier_dir / "hot" / "store" / "f.bin"
    # A small chunk makes every size cross several chunk boundaries.
    result = copy_file(
        src, tier_dir / ".tmp" / "f.part", final, expected_size=size, chunk=64 << 10, depth=3
    )
    assert final.read_bytes() == data
    assert result.xxh3 == xxhash.xxh3_128_hexdigest(data) == hash_file(final)
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    assert list((tier_dir / ".tmp").iterdir()) == []


def test_progress_adds_up_to_the_size(source_dir: Path, tier_dir: Path) -> None:
    src = source_dir / "f.bin"
    src.write_bytes(os.urandom(1_000_000))
    seen: list[int] = []
    copy_file(
        src,
        tier_dir / ".tmp" / "p",
        tier_dir / "hot" / "f",
        expected_size=1_000_000,
        chunk=64 << 10,
        progress=seen.append,
    )
    assert sum(seen) == 1_000_000
    assert len(seen) == -(-1_000_000 // (64 << 10))


def test_a_corrupted_write_is_caught_and_nothing_is_left(
    source_dir: Path, tier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source_dir / "f.bin"
    src.write_bytes(os.urandom(300_000))
    real_pwritev = os.pwritev

    def flipping_pwritev(fd: int, buffers: list[memoryview], offset: int) -> int:
        data = bytearray(b"".join(bytes(b) for b in buffers))
        if offset == 0:
            data[100] ^= 0xFF
        return real_pwritev(fd, [data], offset)

    monkeypatch.setattr(copier.os, "pwritev", flipping_pwritev)
    final = tier_dir / "hot" / "f"
    with pytest.raises(CopyVerifyError, match="hashes"):
        copy_file(src, tier_dir / ".tmp" / "x", final, expected_size=300_000, chunk=64 << 10)
    assert not final.exists()
    assert list((tier_dir / ".tmp").iterdir()) == []


def test_cancel_stops_the_copy_and_removes_the_temp(source_dir: Path, tier_dir: Path) -> None:
    src = source_dir / "f.bin"
    src.write_bytes(os.urandom(2 << 20))
    cancel = threading.Event()

    def cancel_after_first(n: int) -> None:
        cancel.set()

    final = tier_dir / "hot" / "f"
    with pytest.raises(CopyCancelled):
        copy_file(
            src,
            tier_dir / ".tmp" / "x",
            final,
            expected_size=2 << 20,
            chunk=64 << 10,
            progress=cancel_after_first,
            cancelled=cancel,
        )
    assert not final.exists()
    assert list((tier_dir / ".tmp").iterdir()) == []


def test_a_source_whose_size_changed_is_refused(source_dir: Path, tier_dir: Path) -> None:
    src = source_dir / "f.bin"
    src.write_bytes(os.urandom(5000))
    with pytest.raises(CopyError) as caught:
        copy_file(src, tier_dir / ".tmp" / "x", tier_dir / "hot" / "f", expected_size=4000)
    assert caught.value.errno == errno.ESTALE
    assert "changed underneath" in str(caught.value)
    assert not (tier_dir / "hot" / "f").exists()


def test_a_missing_source_is_a_named_error(source_dir: Path, tier_dir: Path) -> None:
    with pytest.raises(CopyError, match=r"cannot open .*gone\.bin"):
        copy_file(
            source_dir / "gone.bin",
            tier_dir / ".tmp" / "x",
            tier_dir / "hot" / "f",
            expected_size=1,
        )


def test_an_existing_hot_copy_is_replaced_atomically(source_dir: Path, tier_dir: Path) -> None:
    src = source_dir / "f.bin"
    src.write_bytes(b"new" * 5000)
    final = tier_dir / "hot" / "f"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"old")
    with open(final, "rb") as held:
        copy_file(src, tier_dir / ".tmp" / "x", final, expected_size=15000)
        # A reader that had the old copy open keeps its bytes: rename, not rewrite.
        assert held.read() == b"old"
    assert final.read_bytes() == b"new" * 5000
