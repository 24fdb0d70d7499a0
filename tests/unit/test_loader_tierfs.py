"""tierfs detection without a mount: the xattr reader and fs probe are patched."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import save_file

import loader
from loader import tierfs
from loader.tuning import auto_candidates


class FakeTierfs:
    """Stands in for a tierfs mount: xattrs answered from a dict keyed by path."""

    def __init__(self) -> None:
        self.attrs: dict[tuple[str, str], bytes] = {}

    def getxattr(self, path: str, name: str) -> bytes | None:
        return self.attrs.get((os.path.abspath(path), name))

    def publish(self, mount_path: Path, backing: Path, tier: str, xxh: str | None) -> None:
        mp = str(mount_path.absolute())
        self.attrs[(mp, tierfs.XATTR_BACKING)] = str(backing).encode()
        self.attrs[(mp, tierfs.XATTR_TIER)] = tier.encode()
        if xxh:
            self.attrs[(mp, tierfs.XATTR_XXH3)] = xxh.encode()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTierfs:
    f = FakeTierfs()
    monkeypatch.setattr(tierfs, "getxattr", f.getxattr)
    return f


def make(path: Path, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = {
        prefix + "a": torch.randn(300, 70, generator=g),
        prefix + "b": torch.randint(0, 9, (5,), generator=g),
    }
    save_file(d, str(path))
    return d


def test_plain_file_is_not_tierfs(tmp_path: Path, fake: FakeTierfs) -> None:
    p = tmp_path / "m.safetensors"
    make(p)
    rf = tierfs.resolve(str(p))
    try:
        assert not rf.on_tierfs and rf.read_path == str(p)
    finally:
        rf.close()


def test_reads_backing_copy_not_mount_path(tmp_path: Path, fake: FakeTierfs) -> None:
    backing = tmp_path / "hot" / "m.safetensors"
    backing.parent.mkdir()
    ref = make(backing)
    mount_path = tmp_path / "mnt" / "m.safetensors"  # does not even exist: never opened
    mount_path.parent.mkdir()
    fake.publish(mount_path, backing, "ram", None)
    with loader.safe_open(str(mount_path)) as f:
        got = dict(f.tensors())
        assert f.files[0].rf.read_path == str(backing)
        assert f.files[0].rf.tier == "ram"
    for k in ref:
        assert torch.equal(got[k], ref[k])


def test_unopenable_backing_falls_back_to_mount_logged_once(
    tmp_path: Path, fake: FakeTierfs, caplog: pytest.LogCaptureFixture
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    refs = []
    for i in range(2):
        p = mnt / f"m{i}.safetensors"
        refs.append(make(p, i, f"m{i}."))
        fake.publish(p, tmp_path / "gone" / f"m{i}.safetensors", "disk", None)
    tierfs._warned.clear()
    with caplog.at_level(logging.WARNING, logger="loader.tierfs"):
        got = loader.load_file([str(mnt / "m0.safetensors"), str(mnt / "m1.safetensors")])
    assert sum("cannot be opened" in r.message for r in caplog.records) == 1
    for ref in refs:
        for k in ref:
            assert torch.equal(got[k], ref[k])


def test_backend_follows_backing_file_system(
    tmp_path: Path, fake: FakeTierfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    backing = tmp_path / "m.safetensors"
    make(backing)
    mp = tmp_path / "mnt.safetensors"
    fake.publish(mp, backing, "ram", None)
    types = {str(backing): "tmpfs"}
    monkeypatch.setattr(tierfs, "fs_type", lambda p: types.get(p, "fuse"))
    rf = tierfs.resolve(str(mp))
    try:
        assert rf.fs == "tmpfs"
        assert auto_candidates(rf, torch.device("cpu"))[0] == "mmap"
        types[str(backing)] = "nfs"
        rf.fs = tierfs.fs_type(rf.read_path)
        monkeypatch.setattr("loader.tuning.page_cache_fraction", lambda fd, n: 0.0)
        assert auto_candidates(rf, torch.device("cpu"))[0] == "direct"
    finally:
        rf.close()


def test_open_fd_survives_demotion(tmp_path: Path, fake: FakeTierfs) -> None:
    backing = tmp_path / "hot.safetensors"
    ref = make(backing)
    mp = tmp_path / "mnt.safetensors"
    fake.publish(mp, backing, "ram", None)
    for backend in ("direct", "buffered", "mmap"):
        make(backing)
        with loader.safe_open(str(mp), backend=backend) as f:
            backing.unlink()  # tierfs demoted the hot copy after we opened it
            got = dict(f.tensors())
        assert torch.equal(got["a"], ref["a"]), backend


def test_verify_against_published_hash(tmp_path: Path, fake: FakeTierfs) -> None:
    backing = tmp_path / "m.safetensors"
    make(backing)
    good = xxhash.xxh3_128_hexdigest(backing.read_bytes())
    mp = tmp_path / "mnt.safetensors"
    for backend in ("direct", "buffered", "mmap"):
        fake.publish(mp, backing, "disk", good)
        for copy in (True, False):
            loader.load_file(str(mp), verify=True, backend=backend, copy=copy)
        fake.publish(mp, backing, "disk", "0" * 32)
        with pytest.raises(loader.IntegrityError, match=r"mnt\.safetensors"):
            loader.load_file(str(mp), verify=True, backend=backend)


def test_fs_type_of_real_paths(tmp_path: Path) -> None:
    assert tierfs.fs_type("/dev/shm") in ("tmpfs", "ramfs")
    assert tierfs.fs_type(str(tmp_path)) != "unknown"
    assert tierfs.mount_root("/dev/shm/x") == "/dev/shm"


@pytest.mark.parametrize(("native", "first"), [(True, "gds"), (False, "direct")])
def test_gds_is_chosen_for_a_gpu_only_where_reads_skip_host_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool, first: str
) -> None:
    # kvikio in compatibility mode bounces through host memory like the staging ring, on
    # one thread by default: the loader's own readers go first there.
    plain = tmp_path / "m.safetensors"
    make(plain)
    monkeypatch.setattr(tierfs, "fs_type", lambda p: "ext4")
    monkeypatch.setattr("loader.tuning.page_cache_fraction", lambda fd, n: 0.0)
    monkeypatch.setattr("loader.tuning.native_gds", lambda: native)
    rf = tierfs.resolve(str(plain))
    try:
        assert auto_candidates(rf, torch.device("cuda", 0))[0] == first
        assert "gds" not in auto_candidates(rf, torch.device("cpu"))
    finally:
        rf.close()
