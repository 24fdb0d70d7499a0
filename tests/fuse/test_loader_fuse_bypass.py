"""The loader on a real tierfs mount: bulk bytes go around FUSE, straight to the backing copy.

The daemon counts the files opened through the mount and the bytes its FUSE read handler
serves (root xattr ``user.tierfs.stats``). With FUSE passthrough the kernel reads an open
file's backing copy itself, so the daemon sees no bytes either way: the open is what shows
a read through the mount. A load through the loader must leave both counters where they
were. The fallback test shows they do move when the loader has to read through the mount
(the bytes too, where the daemon serves reads), so the check has teeth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import loader
from tests.fuse.mounting import Mount, MountFactory
from tests.fuse.tierutil import cli_ok, lazy_umount
from tests.loader_testutil import Digest, digest

MODEL = "ckpt"


def write_checkpoint(store: Path) -> dict[str, Digest]:
    """An HF-style two-shard checkpoint of 16 MiB; returns the digest of every tensor."""
    model_dir = store / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"model_type": "test"}')
    g = torch.Generator().manual_seed(0)
    expected = {}
    for s in range(2):
        shard = {f"s{s}.w{i}": torch.randn(256, 1024, generator=g) for i in range(8)}
        save_file(shard, str(model_dir / f"model-0000{s + 1}-of-00002.safetensors"))
        expected.update({k: digest(v) for k, v in shard.items()})
    return expected


def fuse_traffic(mount: Mount) -> tuple[int, int]:
    """Files opened through the mount, and bytes the daemon handed the kernel (read
    replies plus prefetch pushes)."""
    stats = mount.stats()
    return stats["opens"], stats["read_bytes"] + stats["pushed_bytes"]


def traffic_since(mount: Mount, before: tuple[int, int]) -> tuple[int, int]:
    now = fuse_traffic(mount)
    return now[0] - before[0], now[1] - before[1]


def load_and_count(
    mount: Mount, backend: str | None
) -> tuple[dict[str, Digest], tuple[int, int], list[str]]:
    before = fuse_traffic(mount)
    with loader.safe_open(mount.mountpoint / MODEL, backend=backend, verify=True) as f:
        read_paths = [of.rf.read_path for of in f.files]
        assert all(of.rf.on_tierfs for of in f.files)
        got = {k: digest(v) for k, v in f.tensors()}
    return got, traffic_since(mount, before), read_paths


def mount_with_ram_tier(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> tuple[Mount, Path]:
    """A mount with one 64 MiB RAM tier and no promotion on open; returns it and the tier."""
    tier = tmp_path / "ram0"
    extra = f'[[tier]]\nname = "ram0"\npath = "{tier}"\nsize = "64M"\n'
    extra += "[policy]\npromote_on_open = false\n"
    return mount_factory([("disk", cold_store)], extra=extra), tier


@pytest.mark.parametrize("backend", [None, "direct", "buffered", "mmap"])
def test_bulk_bytes_bypass_fuse_from_a_cold_store(
    mount_factory: MountFactory, cold_store: Path, backend: str | None
) -> None:
    expected = write_checkpoint(cold_store)
    mount = mount_factory([("disk", cold_store)])
    got, through_fuse, read_paths = load_and_count(mount, backend)
    assert got == expected
    assert all(p.startswith(str(cold_store)) for p in read_paths), read_paths
    # Not a single file was opened through the mount, nor a byte (header included)
    # served by the FUSE daemon.
    assert through_fuse == (0, 0)


def test_bulk_bytes_bypass_fuse_from_a_ram_tier(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    expected = write_checkpoint(cold_store)
    mount, tier = mount_with_ram_tier(mount_factory, cold_store, tmp_path)
    try:
        cli_ok(mount.config, "promote", MODEL, "--wait")
        with loader.safe_open(mount.mountpoint / MODEL) as f:
            # On a RAM tier the loader maps the hot copy rather than reading it.
            assert set(f.backends.values()) == {"mmap"}, f.backends
        got, through_fuse, read_paths = load_and_count(mount, None)
        assert got == expected
        assert all(p.startswith(str(tier)) for p in read_paths), read_paths
        assert through_fuse == (0, 0)
    finally:
        mount.cleanup()
        lazy_umount(tier)


@pytest.mark.parametrize("backend", [None, "buffered", "direct"])
def test_load_opened_on_a_ram_tier_survives_demotion_mid_load(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path, backend: str | None
) -> None:
    expected = write_checkpoint(cold_store)
    mount, tier = mount_with_ram_tier(mount_factory, cold_store, tmp_path)
    try:
        cli_ok(mount.config, "promote", MODEL, "--wait")
        with loader.safe_open(
            mount.mountpoint / MODEL, backend=backend, verify=True, chunk_size="1M", threads=1
        ) as f:
            assert all(of.rf.read_path.startswith(str(tier)) for of in f.files)
            assert all(of.rf.xxh3 for of in f.files), "tierfs published no hash"
            it = f.tensors()
            got = dict([next(it)])
            stats = f.last_stats
            assert stats is not None
            # One reader thread keeps at most a few 1 MiB reads ahead: most bytes are unread.
            if backend is not None:
                assert stats.bytes_read < 8 << 20, stats.bytes_read
            # The hot copies are deleted while the load is under way: the open fds (and
            # mappings) keep the old, immutable bytes, and the hash still checks out.
            cli_ok(mount.config, "demote", MODEL)
            assert not any((tier / "hot").rglob("*.safetensors")), "demote left hot copies"
            got.update(it)
        assert {k: digest(v) for k, v in got.items()} == expected
    finally:
        mount.cleanup()
        lazy_umount(tier)


_LOAD_IN_CHILD = """
import json, sys
import loader
from tests.loader_testutil import digest
with loader.safe_open(sys.argv[1], verify=True) as f:
    paths = [of.rf.read_path for of in f.files]
    got = {k: list(map(str, digest(v))) for k, v in f.tensors()}
print(json.dumps({"paths": paths, "got": got}))
"""


def test_loader_falls_back_through_the_mount_when_the_backing_copy_is_out_of_reach(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    """In a mount namespace where the cold store is hidden, the FUSE mount still works
    (its daemon sees the store) but the backing path does not: the loader must read
    through the mount, and the daemon's counter must show it."""
    expected = write_checkpoint(cold_store)
    mount = mount_factory([("disk", cold_store)])
    empty = tmp_path / "empty"
    empty.mkdir()
    before = fuse_traffic(mount)
    script = (
        f"mount --bind {empty} {cold_store} && "
        f"{sys.executable} -c '{_LOAD_IN_CHILD}' {mount.mountpoint / MODEL}"
    )
    child = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert all(p.startswith(str(mount.mountpoint)) for p in result["paths"]), result["paths"]
    assert result["got"] == {k: list(map(str, v)) for k, v in expected.items()}
    opens, served = traffic_since(mount, before)
    assert opens >= 2  # both shards
    if mount.stats()["read_mode"] == "daemon":
        assert served >= 16 << 20
    # The cold store in our own namespace was never touched by the bind mount.
    assert (cold_store / MODEL / "config.json").exists()


def test_repo_id_in_a_hub_cache_on_tierfs_loads_around_fuse(
    demo_mount: Mount, demo_cold: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `vllm serve org/name --load-format tierfs` does with HF_HUB_CACHE on the mount:
    the repo id resolves through the mount's snapshot symlinks, and the loader then reads the
    blobs' backing files, not the mount."""
    from huggingface_hub import constants
    from safetensors.torch import load_file

    from loader.engines import checkpoint_paths, iter_weights
    from tierfs.ops.demo import HUB_REPO_ID

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(demo_mount.mountpoint / "hub"))
    paths = checkpoint_paths(HUB_REPO_ID)
    assert isinstance(paths, list), paths  # the demo repo has no index
    files = [Path(p) for p in paths]
    assert files and all(p.is_relative_to(demo_mount.mountpoint / "hub") for p in files)
    want: dict[str, object] = {}
    for p in files:
        cold = demo_cold / p.resolve().relative_to(demo_mount.mountpoint)
        want.update({k: digest(v) for k, v in load_file(cold).items()})
    before = fuse_traffic(demo_mount)
    got = {k: digest(v) for k, v in iter_weights(paths, backend="buffered")}
    assert got == want
    assert traffic_since(demo_mount, before) == (0, 0)
