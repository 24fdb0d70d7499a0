"""kill -9 of the daemon at every step of a promotion and of an eviction, then a remount.

The daemon is paused at a named fault point (``TIERFS_FAULT_PAUSE``), killed with SIGKILL,
and started again on the same config and state without the fault. Recovery must leave
nothing half-done: no partial copy served, no transient replica states, no stray files on
the tier, fsck clean with and without a daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fuse.crashutil import (
    HF_MODEL,
    TIER,
    MiB,
    TierDirs,
    assert_catalog_consistent,
    assert_fsck_clean,
    assert_serves_cold_bytes,
    build_hf_model,
    control,
    files_under,
    manual_tier_toml,
    model_state,
    read_catalog,
    restart,
    wait_for_log,
    xxh,
)
from tests.fuse.mounting import REPO_ROOT, Mount, MountFactory
from tests.fuse.tierutil import cli_ok, promote_wait
from tierfs.errors import ControlError
from tierfs.states import JobState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

Rig = Callable[..., tuple[Mount, dict[str, str], Path]]


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[TierDirs]:
    dirs = TierDirs(tmp_path)
    yield dirs
    dirs.cleanup()


@pytest.fixture
def rig(tiers: TierDirs, mount_factory: MountFactory, cold_store: Path) -> Rig:
    """A mount over an HF model with one 64 MiB RAM tier; returns (mount, hashes, tier)."""

    def make(env: dict[str, str] | None = None) -> tuple[Mount, dict[str, str], Path]:
        hashes = build_hf_model(cold_store)
        tier = tiers.new()
        mount = mount_factory([("cold", cold_store)], extra=manual_tier_toml(tier), env=env)
        return mount, hashes, tier

    return make


def _after_remount(mount: Mount, cold: Path, hashes: dict[str, str], tier: Path) -> None:
    """What must hold once the daemon recovered: nothing half-done, right bytes only."""
    assert_serves_cold_bytes(mount, cold, hashes, tier)
    assert_catalog_consistent(mount.state_dir, tier)
    assert_fsck_clean(mount.config)


def _promote_and_check_hot(
    mount: Mount, cold: Path, hashes: dict[str, str], tier: Path, *, cli: bool
) -> None:
    if cli:
        out = cli_ok(mount.config, "promote", "--wait", HF_MODEL).stdout
        assert f"{HF_MODEL} is hot on {TIER}" in out
    else:
        assert promote_wait(mount.state_dir, HF_MODEL)["state"] == "done"
    assert model_state(mount, HF_MODEL)["state"] == "hot"
    served = assert_serves_cold_bytes(mount, cold, hashes, tier)
    assert set(served.values()) == {TIER}, served
    hot = assert_catalog_consistent(mount.state_dir, tier)
    assert len(hot) == len(hashes)


@pytest.mark.parametrize("point", ["copy_written", "copy_verified", "copy_renamed"])
def test_kill_during_promotion_then_remount(point: str, rig: Rig, cold_store: Path) -> None:
    mount, hashes, tier = rig(env={"TIERFS_FAULT_PAUSE": point})
    with control(mount) as client:
        client.promote(HF_MODEL, None)
    wait_for_log(mount, f"fault point {point} reached")

    # The crash really hits mid-copy: claims in the catalog, bytes on the tier.
    _, replicas = read_catalog(mount.state_dir)
    assert replicas and {r.state for r in replicas} == {"copying"}, replicas
    if point == "copy_renamed":
        assert files_under(tier / "hot"), "copies should be renamed into place already"
    else:
        assert files_under(tier / ".tmp"), "temp copies should be on the tier"
        assert not files_under(tier / "hot")
    # Meanwhile readers get cold bytes only: a copy the catalog has not accepted never serves.
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {"cold"}, served

    mount.kill()
    restart(mount)
    assert "recovered:" in mount.log_text()
    assert not files_under(tier / ".tmp")
    assert not files_under(tier / "hot")
    # Not hot (nor partially hot) until promoted again: every file is served from cold.
    assert model_state(mount, HF_MODEL)["state"] == "cold"
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {"cold"}, served
    _after_remount(mount, cold_store, hashes, tier)

    _promote_and_check_hot(mount, cold_store, hashes, tier, cli=True)
    assert_fsck_clean(mount.config)
    assert mount.stop() == 0
    assert_fsck_clean(mount.config)
    assert_catalog_consistent(mount.state_dir, tier)


@pytest.mark.parametrize("point", ["copy_started", "copy_renamed"])
def test_sigterm_during_promotion_leaves_nothing_to_repair(
    point: str, rig: Rig, cold_store: Path
) -> None:
    """A clean stop mid-copy settles the copy: fsck afterwards finds nothing (the soak
    found a SIGTERM between a copy's rename and its acceptance leaving the claim behind)."""
    mount, hashes, tier = rig(env={"TIERFS_FAULT_PAUSE": point, "TIERFS_FAULT_PAUSE_S": "3"})
    with control(mount) as client:
        client.promote(HF_MODEL, None)
    wait_for_log(mount, f"fault point {point} reached")

    assert mount.stop() == 0
    _, replicas = read_catalog(mount.state_dir)
    assert {r.state for r in replicas} <= {"hot"}, replicas
    assert not files_under(tier / ".tmp")
    assert_catalog_consistent(mount.state_dir, tier)
    out = assert_fsck_clean(mount.config)
    assert "0 hot copies checked" in out or point == "copy_renamed", out

    restart(mount)
    _after_remount(mount, cold_store, hashes, tier)


def test_sigterm_during_eviction_leaves_nothing_to_repair(rig: Rig, cold_store: Path) -> None:
    """A clean stop mid-demotion finishes it (the soak found one left 'evicting')."""
    mount, hashes, tier = rig(
        env={"TIERFS_FAULT_PAUSE": "evict_marked", "TIERFS_FAULT_PAUSE_S": "3"}
    )
    _promote_and_check_hot(mount, cold_store, hashes, tier, cli=False)
    demote = threading.Thread(target=_demote_quietly, args=(mount,), daemon=True)
    demote.start()
    wait_for_log(mount, "fault point evict_marked reached")

    assert mount.stop() == 0
    demote.join(timeout=30)
    _, replicas = read_catalog(mount.state_dir)
    assert {r.state for r in replicas} <= {"hot"}, replicas
    assert_catalog_consistent(mount.state_dir, tier)
    assert_fsck_clean(mount.config)
    restart(mount)
    _after_remount(mount, cold_store, hashes, tier)


def _demote_quietly(mount: Mount) -> None:
    """Demote through the control API; the daemon may stop before it answers."""
    try:
        with control(mount) as client:
            client.demote(HF_MODEL)
    except ControlError:
        pass


def test_kill_during_eviction_then_remount(rig: Rig, cold_store: Path) -> None:
    mount, hashes, tier = rig(env={"TIERFS_FAULT_PAUSE": "evict_marked"})
    _promote_and_check_hot(mount, cold_store, hashes, tier, cli=False)

    demote = subprocess.Popen(
        [sys.executable, "-m", "tierfs", "demote", HF_MODEL, "-c", str(mount.config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_log(mount, "fault point evict_marked reached")
        _, replicas = read_catalog(mount.state_dir)
        evicting = [r for r in replicas if r.state == "evicting"]
        assert len(evicting) == 1, replicas
        victim = Path(evicting[0].path)
        assert victim.exists(), "the file is unlinked only after the mark"
        # Its copy was withdrawn before the mark: new opens of it go to cold already.
        served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
        victim_rel = os.fspath(victim.relative_to(tier / "hot" / "cold"))
        assert served[victim_rel] == "cold"
        mount.kill()
        demote.wait(timeout=30)
    finally:
        if demote.poll() is None:
            demote.kill()
            demote.wait()
    assert demote.returncode != 0, "demote cannot have succeeded: its daemon was killed"

    restart(mount)
    assert "recovered:" in mount.log_text()
    assert not victim.exists()
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert served[victim_rel] == "cold"
    # The files whose demotion had not started yet are still hot and still right.
    assert sorted(r for r, t in served.items() if t == TIER) == sorted(
        r for r in hashes if r != victim_rel
    )
    assert model_state(mount, HF_MODEL)["state"] == "partial"
    _after_remount(mount, cold_store, hashes, tier)

    # A demotion after recovery finishes the job.
    with control(mount) as client:
        client.demote(HF_MODEL)
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {"cold"}, served
    assert not files_under(tier / "hot")
    assert mount.stop() == 0
    assert_fsck_clean(mount.config)
    _, replicas = read_catalog(mount.state_dir)
    assert replicas == []


def test_a_failing_copy_fails_its_job_not_the_daemon(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    """A copy that hits ENOSPC (the tmpfs fills up after the space was checked, e.g. with
    evicted copies that readers still hold open) fails its promotion cleanly."""
    hashes = build_hf_model(cold_store)
    tier = tiers.new()
    mount = mount_factory(
        [("cold", cold_store)],
        extra=manual_tier_toml(tier, size="8M"),
        env={"TIERFS_FAULT_PAUSE": "copy_started", "TIERFS_FAULT_PAUSE_S": "3"},
    )
    with control(mount) as client:
        job = client.promote(HF_MODEL, None)
        # The space was checked and the copies have begun: now fill the tmpfs behind
        # tierfs's back, leaving room for one shard but not both.
        wait_for_log(mount, "fault point copy_started reached")
        filler = tier / "filler"
        filler.write_bytes(b"\0" * (4 * MiB + 512 * 1024))
        deadline = time.monotonic() + 60
        while JobState(job["state"]).active and time.monotonic() < deadline:
            time.sleep(0.05)
            job = client.job(job["id"])
    assert mount.process is not None and mount.process.poll() is None, mount.log_text()
    assert job["state"] == "failed", job
    assert "No space left on device" in job["error"], job
    # The files that did fit are hot, the one that did not is cold: no claim leaked.
    replicas = assert_catalog_consistent(mount.state_dir, tier)
    assert 0 < len(replicas) < len(hashes)
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert "cold" in served.values()
    assert model_state(mount, HF_MODEL)["state"] == "partial"
    assert_fsck_clean(mount.config)

    filler.unlink()
    assert promote_wait(mount.state_dir, HF_MODEL)["state"] == "done"
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {TIER}, served
    assert len(assert_catalog_consistent(mount.state_dir, tier)) == len(hashes)


def test_an_open_that_races_an_eviction_falls_back_to_cold(rig: Rig, cold_store: Path) -> None:
    """An open chooses the hot copy; before it opens it, a demotion deletes it. The reader
    must still get the file, from cold, and never see ENOENT."""
    mount, hashes, tier = rig(
        env={"TIERFS_FAULT_PAUSE": "backing_open", "TIERFS_FAULT_PAUSE_S": "3"}
    )
    assert promote_wait(mount.state_dir, HF_MODEL)["state"] == "done"
    rel = f"{HF_MODEL}/model-00001-of-00002.safetensors"
    hot = tier / "hot" / "cold" / rel
    assert hot.exists()
    result: dict[str, object] = {}

    def reader() -> None:
        try:
            result["data"] = (mount.mountpoint / rel).read_bytes()
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for_log(mount, "fault point backing_open reached")
    with control(mount) as client:
        client.demote(HF_MODEL)
    assert not hot.exists()
    thread.join(timeout=60)
    assert "error" not in result, result.get("error")
    data = result["data"]
    assert isinstance(data, bytes)
    assert xxh(data) == hashes[rel]
