"""Placement strategies on a real mount with two tmpfs tiers.

Each tier is a 4 MiB tmpfs the daemon mounts itself; the models are lone 2 MiB files, so
a tier holds two. Watermarks at 1.0 keep the arithmetic plain. Every placement is
checked where a reader sees it: the tier the mount names for a file (``user.tierfs.tier``)
and the bytes read through the mount, by xxh3.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, MountFactory, file_hash

MiB = tu.MiB
tier_guard = tu.tier_guard

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(120)]


def strategy_mount(mount_factory: MountFactory, tiers: Path, cold: Path, strategy: str) -> Mount:
    extra = (
        tu.tier_toml("ram0", tiers / "ram0", "4M", rank=0)
        + tu.tier_toml("ram1", tiers / "ram1", "4M", rank=1)
        + tu.policy_toml(promote_on_open=False, high_watermark=1.0, low_watermark=1.0)
        + f'[placement]\nstrategy = "{strategy}"\n'
    )
    return mount_factory([("c", cold)], extra=extra)


def make_models(cold: Path, names: str) -> dict[str, str]:
    return {
        f"{n}.safetensors": tu.write_random(cold / f"{n}.safetensors", 2 * MiB, i)
        for i, n in enumerate(names)
    }


def placed(mount: Mount, hashes: dict[str, str]) -> dict[str, str]:
    """model -> the tier serving it, after checking its bytes through the mount."""
    out = {}
    for name, want in hashes.items():
        assert tu.read_through(mount.mountpoint / name) == want, name
        out[name] = os.getxattr(mount.mountpoint / name, "user.tierfs.tier").decode()
    return out


def promote(mount: Mount, name: str) -> None:
    job = tu.promote_wait(mount.state_dir, name)
    assert job["state"] == "done", job


def touch(mount: Mount, name: str, want: str) -> None:
    assert tu.read_through(mount.mountpoint / name) == want
    time.sleep(0.02)  # distinct access times


def test_fastest_fit_fills_the_slower_tier_before_evicting(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, "abcde")
    mount = strategy_mount(mount_factory, tier_guard, cold_store, "fastest-fit")
    for name in "abcd":
        promote(mount, f"{name}.safetensors")
    assert placed(mount, {k: hashes[k] for k in sorted(hashes)[:4]}) == {
        "a.safetensors": "ram0",
        "b.safetensors": "ram0",
        "c.safetensors": "ram1",
        "d.safetensors": "ram1",
    }
    assert "evicted" not in mount.log_text()
    touch(mount, "a.safetensors", hashes["a.safetensors"])
    promote(mount, "e.safetensors")  # no room anywhere: b, ram0's LRU, goes to cold
    got = placed(mount, hashes)
    assert got["e.safetensors"] == "ram0" and got["b.safetensors"] == "c"
    assert tu.status(mount.state_dir)["strategy"] == "fastest-fit"


def test_fill_first_moves_the_evicted_model_down_a_tier_with_its_bytes(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, "abc")
    mount = strategy_mount(mount_factory, tier_guard, cold_store, "fill-first")
    promote(mount, "a.safetensors")
    promote(mount, "b.safetensors")
    touch(mount, "b.safetensors", hashes["b.safetensors"])
    promote(mount, "c.safetensors")
    assert placed(mount, hashes) == {
        "a.safetensors": "ram1",
        "b.safetensors": "ram0",
        "c.safetensors": "ram0",
    }
    moved = tier_guard / "ram1" / "hot" / "c" / "a.safetensors"
    assert file_hash(moved) == hashes["a.safetensors"]
    assert not (tier_guard / "ram0" / "hot" / "c" / "a.safetensors").exists()
    assert "moving a.safetensors down from ram0 to ram1" in mount.log_text()
    assert tu.status(mount.state_dir)["strategy"] == "fill-first"


def test_round_robin_alternates_between_the_tiers(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, "abc")
    mount = strategy_mount(mount_factory, tier_guard, cold_store, "round-robin")
    for name in "abc":
        promote(mount, f"{name}.safetensors")
    assert placed(mount, hashes) == {
        "a.safetensors": "ram0",
        "b.safetensors": "ram1",
        "c.safetensors": "ram0",
    }
