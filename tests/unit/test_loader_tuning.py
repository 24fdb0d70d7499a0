"""Derived tuning and backend registry extension points."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import loader
from loader import tierfs
from loader.arguments import parse_size
from loader.backends.base import BackendFile, OpenContext, pread_full
from loader.tierfs import ResolvedFile
from tierfs.errors import ConfigError as TierfsConfigError
from tierfs.errors import TierfsError
from tierfs.units import parse_size as config_parse_size


def test_parse_size() -> None:
    assert parse_size("16M", "x") == 16 << 20
    assert parse_size("1GiB", "x") == 1 << 30
    assert parse_size("65536", "x") == 65536
    assert parse_size(None, "x") is None
    with pytest.raises(loader.ConfigError, match="not a size"):
        parse_size("lots", "chunk_size")


def test_virtio_disk_is_not_treated_as_rotational(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sysfs = tmp_path / "devices" / "pci0" / "virtio1" / "block" / "vda"
    (sysfs / "queue").mkdir(parents=True)
    (sysfs / "queue" / "rotational").write_text("1\n")
    (sysfs / "queue" / "max_sectors_kb").write_text("1280\n")
    real_join = tierfs.os.path.join

    def fake_realpath(p: str) -> str:
        return str(sysfs) if p.startswith("/sys/dev/block/") else p

    def fake_join(a: str, *rest: str) -> str:
        if a.startswith("/sys/dev/block/"):
            a = str(sysfs)
        return real_join(a, *rest)

    monkeypatch.setattr(tierfs.os.path, "realpath", fake_realpath)
    monkeypatch.setattr(tierfs.os.path, "join", fake_join)
    prof = tierfs.storage_profile(str(tmp_path), "ext4")
    assert not prof.rotational and prof.max_sectors_kb == 1280


def test_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(p))
    with loader.safe_open(p, threads=3, chunk_size="1M") as f:
        assert f.tuning.threads == 3 and f.tuning.chunks == [1 << 20]
    monkeypatch.setenv("LOADER_THREADS", "5")
    monkeypatch.setenv("LOADER_CHUNK_SIZE", "2M")
    with loader.safe_open(p) as f:
        assert f.tuning.threads == 5 and f.tuning.chunks == [2 << 20]


@pytest.mark.parametrize(("copy", "threads"), [(True, 12), (False, 8)])
def test_readers_that_copy_after_reading_get_four_more_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: bool, threads: int
) -> None:
    # Cold O_DIRECT into owned CPU tensors bounces each chunk into fresh memory after the
    # read; views (copy=False) are read straight into their buffer.
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(p))
    monkeypatch.setattr("loader.fill.HUGE_DESTINATIONS", False)
    monkeypatch.setattr(
        tierfs, "storage_profile", lambda path, fs: tierfs.StorageProfile(fs, False, 1280)
    )
    with loader.safe_open(p, backend="direct", copy=copy) as f:
        assert f.tuning.threads == threads
        assert f.tuning.chunks == [16 << 20]


class CountingFile(BackendFile):
    reads = 0

    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        CountingFile.reads += 1
        pread_full(self.rf.fd, self.path, buf, offset, need)


class CountingBackend(loader.Backend):
    name = "counting"

    def open(self, rf: ResolvedFile, ctx: OpenContext) -> BackendFile:
        return CountingFile(rf)


def test_custom_backend_registration(tmp_path: Path) -> None:
    loader.register_backend(CountingBackend)
    assert "counting" in loader.available_backends()
    p = tmp_path / "m.safetensors"
    ref = {"a": torch.randn(100, 100), "b": torch.arange(7)}
    save_file(ref, str(p))
    got = loader.load_file(p, backend="counting")
    assert CountingFile.reads >= 1
    for k, v in ref.items():
        assert torch.equal(got[k], v)


def test_parse_size_follows_the_config_rule() -> None:
    # One rule for the loader and the config: decimals, every binary unit, no negatives.
    for text in ("1.5G", "2T", "512 MiB", "7kb"):
        assert parse_size(text, "x") == config_parse_size(text)
    with pytest.raises(loader.ConfigError, match="staging_size"):
        parse_size(-1, "staging_size")


def test_loader_config_errors_are_tierfs_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(p))
    assert loader.ConfigError is TierfsConfigError
    with pytest.raises(TierfsConfigError) as ei:
        loader.safe_open(p, threads=0)
    assert ei.value.key == "threads" and "must be >= 1, not 0" in str(ei.value)
    monkeypatch.setenv("LOADER_THREADS", "many")
    with pytest.raises(TierfsConfigError) as ei:
        loader.safe_open(p)
    assert ei.value.key == "LOADER_THREADS" and "'many'" in str(ei.value)


def test_loader_errors_are_tierfs_errors_with_path_and_errno(tmp_path: Path) -> None:
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(TierfsError) as ei:
        loader.safe_open(missing)
    assert isinstance(ei.value, loader.LoaderIOError)
    assert ei.value.path == str(missing) and ei.value.errno == errno.ENOENT
    assert str(ei.value).startswith(f"{missing}: cannot open")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(TierfsError) as ei:
        loader.safe_open(bad)
    assert isinstance(ei.value, loader.SafetensorsFormatError)
    assert ei.value.path == str(bad) and ei.value.errno == errno.EINVAL
