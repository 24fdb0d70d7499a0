"""Eviction from a small real RAM tier: LRU order, watermarks, pins, models that never fit.

The tier holds 16 MiB; the models are lone files of a few MiB, so every number below
follows from the config: eviction starts when a promotion would take the tier above
``high_watermark * size`` and goes on, least recently used first, until the tier with
the new model fits under ``low_watermark * size``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, MountFactory

MiB = tu.MiB
TIER_SIZE = 16 * MiB
HIGH, LOW = 0.95, 0.85
tier_guard = tu.tier_guard

pytestmark = pytest.mark.timeout(120)


def lone(name: str) -> str:
    return f"m/{name}.safetensors"


def make_models(cold: Path, sizes: dict[str, int]) -> dict[str, str]:
    """Lone-file models m/<name>.safetensors; returns model name -> xxh3."""
    return {
        lone(name): tu.write_random(cold / lone(name), size, seed)
        for seed, (name, size) in enumerate(sorted(sizes.items()))
    }


def small_tier(
    mount_factory: MountFactory, tiers: Path, cold: Path, *, promote_on_open: bool = False
) -> Mount:
    extra = tu.tier_toml("ram0", tiers / "ram0", "16M") + tu.policy_toml(
        promote_on_open=promote_on_open,
        min_size=0,
        cooldown_s=300,
        high_watermark=HIGH,
        low_watermark=LOW,
        max_parallel_copies=2,
    )
    return mount_factory([("c", cold)], extra=extra)


def touch(mount: Mount, model: str, want: str) -> None:
    """Read a model's file through the mount (an access for LRU), checking its bytes."""
    assert tu.read_through(mount.mountpoint / model) == want
    time.sleep(0.02)  # distinct access times


def hot_set(report: dict[str, object]) -> set[str]:
    return {name for name, state in tu.states(report).items() if state == "hot"}


def expected_after(used: int, needed: int, lru: list[tuple[str, int]]) -> tuple[set[str], int]:
    """What the policy must evict for `needed` bytes, given (model, size) LRU first."""
    evicted: set[str] = set()
    if used + needed <= HIGH * TIER_SIZE:
        return evicted, used + needed
    for name, size in lru:
        if used + needed <= LOW * TIER_SIZE:
            break
        evicted.add(name)
        used -= size
    return evicted, used + needed


def check_usage(report: dict[str, object]) -> int:
    row = tu.tier_row(report, "ram0")
    assert row["used"] == tu.hot_sum(report, "ram0"), report
    assert row["free"] == TIER_SIZE - row["used"]
    return int(row["used"])


@pytest.mark.slow
def test_eviction_is_lru_and_stops_at_low_watermark(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, {n: 4 * MiB for n in "abcde"})
    a, b, c, d, e = (lone(n) for n in "abcde")
    mount = small_tier(mount_factory, tier_guard, cold_store)
    for model in (a, b, c):
        assert tu.promote_wait(mount.state_dir, model)["state"] == "done"
    assert check_usage(tu.status(mount.state_dir)) == 12 * MiB

    # Access order: c, then a; b never. Name order or promotion order would pick a or b.
    touch(mount, c, hashes[c])
    touch(mount, a, hashes[a])
    evict, final = expected_after(12 * MiB, 4 * MiB, [(b, 4 * MiB), (c, 4 * MiB), (a, 4 * MiB)])
    assert evict == {b}  # the arithmetic of the config, spelled out
    assert tu.promote_wait(mount.state_dir, d)["state"] == "done"
    report = tu.status(mount.state_dir)
    assert hot_set(report) == {a, c, d}
    used = check_usage(report)
    assert used == final <= LOW * TIER_SIZE
    assert used <= LOW * TIER_SIZE + 4 * MiB
    assert f"evicted {b} from ram0" in mount.log_text()

    # Now d is read; c (read before a) is the least recently used hot model.
    touch(mount, d, hashes[d])
    assert tu.promote_wait(mount.state_dir, e)["state"] == "done"
    report = tu.status(mount.state_dir)
    assert hot_set(report) == {a, d, e}
    assert check_usage(report) == 12 * MiB
    # Evicted models still read right, from cold.
    for model in (b, c):
        assert os.getxattr(mount.mountpoint / model, "user.tierfs.tier") == b"c"
        assert tu.read_through(mount.mountpoint / model) == hashes[model]


@pytest.mark.slow
def test_no_eviction_below_high_watermark_then_down_to_low(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    names = ["w1", "w2", "w3", "w4", "w5", "w6"]
    size = 3 * MiB
    hashes = make_models(cold_store, {n: size for n in names})
    models = [lone(n) for n in names]
    mount = small_tier(mount_factory, tier_guard, cold_store)

    # 5 x 3 MiB = 15 MiB <= 0.95 x 16 MiB: everything fits, nothing is evicted.
    for model in models[:5]:
        assert tu.promote_wait(mount.state_dir, model)["state"] == "done"
    report = tu.status(mount.state_dir)
    assert hot_set(report) == set(models[:5])
    assert check_usage(report) == 15 * MiB > LOW * TIER_SIZE
    assert "evicted" not in mount.log_text()

    order = [models[i] for i in (2, 0, 4, 1, 3)]  # least recently used first
    for model in order:
        touch(mount, model, hashes[model])
    evict, final = expected_after(15 * MiB, size, [(m, size) for m in order])
    assert evict == set(order[:2])  # 18 > 15.2; 15 > 13.6 after one; 12 <= 13.6 after two
    assert tu.promote_wait(mount.state_dir, models[5])["state"] == "done"
    report = tu.status(mount.state_dir)
    assert hot_set(report) == set(models) - evict
    assert check_usage(report) == final == 12 * MiB


@pytest.mark.slow
def test_pinned_model_is_never_evicted(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, {n: 4 * MiB for n in "abcd"} | {"x": 5 * MiB})
    a, b, c, d, x = (lone(n) for n in "abcdx")
    mount = small_tier(mount_factory, tier_guard, cold_store)
    for model in (a, b, c):
        assert tu.promote_wait(mount.state_dir, model)["state"] == "done"
    tu.cli_ok(mount.config, "pin", b)
    tu.wait_idle(mount.state_dir)
    touch(mount, c, hashes[c])
    touch(mount, a, hashes[a])  # b, pinned, is the least recently used

    assert tu.promote_wait(mount.state_dir, d)["state"] == "done"
    report = tu.status(mount.state_dir)
    assert hot_set(report) == {a, b, d}  # c went, the next in LRU order
    assert tu.model_of(report, b)["pinned"] is True

    # Pin everything that is hot: a model that would need an eviction cannot come in,
    # and the pins stay.
    for model in (a, d):
        tu.cli_ok(mount.config, "pin", model)
    tu.wait_idle(mount.state_dir)
    result = tu.cli(mount.config, "promote", x, "--wait")
    assert result.returncode != 0
    assert "does not fit" in result.stderr, result.stderr
    report = tu.status(mount.state_dir)
    assert hot_set(report) == {a, b, d}
    assert tu.model_of(report, x)["cold_reason"]
    assert check_usage(report) == 12 * MiB
    assert tu.read_through(mount.mountpoint / x) == hashes[x]


@pytest.mark.slow
def test_model_bigger_than_tier_stays_cold_and_readable(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, {"a": 4 * MiB, "huge": 17 * MiB})
    a, huge = lone("a"), lone("huge")
    mount = small_tier(mount_factory, tier_guard, cold_store, promote_on_open=True)
    assert tu.promote_wait(mount.state_dir, a)["state"] == "done"

    result = tu.cli(mount.config, "promote", huge, "--wait")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tierfs:")]
    assert len(errors) == 1, result.stderr
    assert huge in errors[0] and "does not fit" in errors[0] and "16.0 MiB" in errors[0]

    report = tu.status(mount.state_dir)
    model = tu.model_of(report, huge)
    assert model["state"] == "cold"
    assert "does not fit" in (model["cold_reason"] or "")
    assert hot_set(report) == {a}, "a hopeless promotion evicted something"
    text = tu.cli_ok(mount.config, "status").stdout
    assert f"{huge} stays cold: " in text

    # Readers never see the failure, also when their open asks for a promotion.
    assert tu.read_through(mount.mountpoint / huge) == hashes[huge]
    with open(mount.mountpoint / huge, "rb") as f:
        assert tu.xxh(f.read()) == hashes[huge]
    assert tu.wait_idle(mount.state_dir)
    assert tu.model_of(tu.status(mount.state_dir), huge)["state"] == "cold"
    assert os.getxattr(mount.mountpoint / huge, "user.tierfs.tier") == b"c"
    # The reason survives a look from outside the daemon, too.
    assert mount.stop() == 0
    assert tu.model_of(tu.cli_json(mount.config), huge)["cold_reason"]


@pytest.mark.slow
def test_reader_of_evicted_model_keeps_reading(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, {n: 4 * MiB for n in "abcd"})
    a, b, c, d = (lone(n) for n in "abcd")
    mount = small_tier(mount_factory, tier_guard, cold_store)
    for model in (a, b, c):
        assert tu.promote_wait(mount.state_dir, model)["state"] == "done"
    hot_copy = Path(os.fsdecode(os.getxattr(mount.mountpoint / b, "user.tierfs.backing")))
    assert hot_copy.exists()

    readers = [
        tu.SplitReader(mount.mountpoint / b, "read"),
        tu.SplitReader(mount.mountpoint / b, "mmap"),
    ]
    try:
        for reader in readers:
            reader.first_half()
        touch(mount, c, hashes[c])
        touch(mount, a, hashes[a])  # b, opened first, is the least recently used
        assert tu.promote_wait(mount.state_dir, d)["state"] == "done"
        assert tu.model_of(tu.status(mount.state_dir), b)["state"] == "cold"
        assert not hot_copy.exists(), "b was not evicted"
        before = mount.stats()
        digests = [reader.second_half() for reader in readers]
        tu.assert_read_by_open_handles(before, mount.stats())
    finally:
        for reader in readers:
            reader.close()
    assert digests == [hashes[b], hashes[b]]
    assert tu.read_through(mount.mountpoint / b) == hashes[b]


@pytest.mark.slow
def test_hopeless_promotion_evicts_nothing(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_models(cold_store, {"a": 4 * MiB, "b": 4 * MiB, "c": 4 * MiB, "x": 9 * MiB})
    a, b, c, x = (lone(n) for n in "abcx")
    mount = small_tier(mount_factory, tier_guard, cold_store)
    for model in (a, b):
        tu.cli_ok(mount.config, "pin", model)
    assert tu.promote_wait(mount.state_dir, c)["state"] == "done"
    tu.wait_idle(mount.state_dir)
    # 9 MiB fits the 16 MiB tier, but not next to the 8 MiB of pins even with c gone.
    job = tu.promote_wait(mount.state_dir, x)
    assert job["state"] == "failed" and "does not fit" in job["error"]
    report = tu.status(mount.state_dir)
    assert hot_set(report) == {a, b, c}, "c was evicted for a promotion that failed anyway"
    assert tu.read_through(mount.mountpoint / x) == hashes[x]
