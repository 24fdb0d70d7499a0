"""Promotion into a real RAM tier, seen through a real mount.

Bytes are checked with xxh3-128 against hashes taken from the cold files before the
mount existed. Where a test must prove where bytes come from, it drops the mount's page
cache first (tierfs opens with keep_cache and pushes read-ahead into the page cache).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, MountFactory
from tierfs.namespace.models import scan_directory

MiB = tu.MiB
tier_guard = tu.tier_guard

pytestmark = pytest.mark.timeout(120)

HF_MODEL = "hf/big"
HF_FILES = {
    "hf/big/config.json": (None, 1),
    "hf/big/model-00001-of-00002.safetensors": (3 * MiB + 4321, 2),
    "hf/big/model-00002-of-00002.safetensors": (2 * MiB + 77, 3),
}


def make_hf_store(root: Path) -> dict[str, str]:
    """An HF model dir (3 files, ~5 MiB) plus two lone files; returns relpath -> xxh3."""
    hashes = {}
    (root / "hf" / "big").mkdir(parents=True)
    config = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'
    (root / "hf/big/config.json").write_bytes(config)
    hashes["hf/big/config.json"] = tu.xxh(config)
    for rel, (size, seed) in HF_FILES.items():
        if size is not None:
            hashes[rel] = tu.write_random(root / rel, size, seed)
    hashes["solo/small.safetensors"] = tu.write_random(root / "solo/small.safetensors", MiB, 4)
    hashes["solo/big.safetensors"] = tu.write_random(root / "solo/big.safetensors", 9 * MiB, 5)
    return hashes


def tiered(
    mount_factory: MountFactory,
    tiers: Path,
    cold: Path,
    *,
    size: str = "64M",
    start: bool = True,
    **policy: object,
) -> Mount:
    extra = tu.tier_toml("ram0", tiers / "ram0", size) + tu.policy_toml(**policy)
    return mount_factory([("c", cold)], extra=extra, start=start)


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The single stderr line of a failed command, which names every needle."""
    assert result.returncode != 0, f"expected failure: {result.stdout} {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# Bytes come from RAM once hot ------------------------------------------------------------


@pytest.mark.parametrize("model", ["hf/tiny-llama", "tiny-llama:latest"])
def test_hot_model_reads_from_ram_when_cold_is_hidden(
    tier_guard: Path, mount_factory: MountFactory, demo_cold: Path, tmp_path: Path, model: str
) -> None:
    cold = tmp_path / "cold"
    shutil.copytree(demo_cold, cold, symlinks=True)
    found = {m.name: m for m in scan_directory(cold).models}
    files = found[model].files
    assert len(files) >= 3, files  # several files: shards + index, or manifest + blobs
    hashes = {rel: tu.file_hash(cold / rel) for rel in files}
    # A file of no model under test: it stays cold, so hiding the cold store must break it.
    control = "misc/embeddings.safetensors"
    assert control not in files
    mount = tiered(mount_factory, tier_guard, cold, promote_on_open=False)

    result = tu.cli(mount.config, "promote", model, "--wait")
    assert result.returncode == 0, result.stderr
    assert f"{model} -> ram0" in result.stderr and "━" in result.stderr, result.stderr
    assert f"{model} is hot on ram0" in result.stdout
    assert tu.model_of(tu.status(mount.state_dir), model)["state"] == "hot"

    empty = tmp_path / "empty"
    empty.mkdir()
    with tu.bind_over(empty, cold):
        assert not any(cold.iterdir()), "the bind mount did not hide the cold store"
        for rel in files:
            assert tu.read_through(mount.mountpoint / rel) == hashes[rel], rel
        # The control file proves the cold store really is unreadable to the daemon now.
        with pytest.raises(OSError):
            tu.read_through(mount.mountpoint / control)
    # And it reads again once the cold store is back.
    assert tu.read_through(mount.mountpoint / control) == tu.file_hash(cold / control)


def test_hot_copy_xattrs_and_mode(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=False)
    mnt = mount.mountpoint
    ram0 = (tier_guard / "ram0").resolve()
    rels = list(HF_FILES)

    # While cold: the cold store and the cold path.
    for rel in rels:
        assert os.getxattr(mnt / rel, "user.tierfs.tier") == b"c"
        assert os.getxattr(mnt / rel, "user.tierfs.backing") == os.fsencode(cold_store / rel)

    assert tu.promote_wait(mount.state_dir, HF_MODEL)["state"] == "done"
    for rel in rels:
        assert os.getxattr(mnt / rel, "user.tierfs.tier") == b"ram0", rel
        backing = Path(os.fsdecode(os.getxattr(mnt / rel, "user.tierfs.backing")))
        assert backing.resolve().is_relative_to(ram0), backing
        assert backing != cold_store / rel
        st = backing.stat()
        assert st.st_mode & 0o7777 == 0o444, oct(st.st_mode)
        assert st.st_size == (cold_store / rel).stat().st_size
        assert tu.file_hash(backing) == hashes[rel]
        assert os.getxattr(mnt / rel, "user.tierfs.xxh3").decode() == hashes[rel], rel
        assert "user.tierfs.xxh3" in os.listxattr(mnt / rel)
    # Not promoted: still served from cold.
    assert os.getxattr(mnt / "solo/small.safetensors", "user.tierfs.tier") == b"c"


# Open handles across moves ---------------------------------------------------------------


@pytest.mark.parametrize("move", ["promote", "demote"])
def test_open_readers_survive_promotion_and_demotion(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, move: str
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=False)
    shard1, shard2 = (f"hf/big/model-0000{i}-of-00002.safetensors" for i in (1, 2))
    if move == "demote":
        assert tu.promote_wait(mount.state_dir, HF_MODEL)["state"] == "done"
    before = os.getxattr(mount.mountpoint / shard1, "user.tierfs.backing")

    readers = [
        tu.SplitReader(mount.mountpoint / shard1, "read"),
        tu.SplitReader(mount.mountpoint / shard2, "mmap"),
    ]
    try:
        for reader in readers:
            reader.first_half()
        tu.cli_ok(mount.config, move, HF_MODEL, *(["--wait"] if move == "promote" else []))
        want = "hot" if move == "promote" else "cold"
        assert tu.model_of(tu.status(mount.state_dir), HF_MODEL)["state"] == want
        after = os.getxattr(mount.mountpoint / shard1, "user.tierfs.backing")
        assert after != before, "the move did not change the backing of new opens"
        if move == "demote":
            assert not Path(os.fsdecode(before)).exists(), "the hot copy was not removed"
        before_rest = mount.stats()
        digests = [reader.second_half() for reader in readers]
        tu.assert_read_by_open_handles(before_rest, mount.stats())
    finally:
        for reader in readers:
            reader.close()
    assert digests == [hashes[shard1], hashes[shard2]]
    # New opens read right too, from wherever they are served now.
    for rel in (shard1, shard2):
        assert tu.read_through(mount.mountpoint / rel) == hashes[rel]


# Policy: transparent promotion -----------------------------------------------------------


def test_open_promotes_whole_model(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=True, min_size=0)
    shard = "hf/big/model-00002-of-00002.safetensors"
    assert tu.model_of(tu.status(mount.state_dir), HF_MODEL)["state"] == "cold"

    assert tu.read_through(mount.mountpoint / shard) == hashes[shard]
    report = tu.wait_state(mount.state_dir, HF_MODEL, "hot", timeout=20)
    assert any(j["model"] == HF_MODEL and j["reason"] == "opened" for j in report["jobs"])
    for rel in HF_FILES:
        assert os.getxattr(mount.mountpoint / rel, "user.tierfs.tier") == b"ram0", rel
        assert tu.read_through(mount.mountpoint / rel) == hashes[rel]
    # Only the opened model moved.
    assert tu.model_of(report, "solo/small.safetensors")["state"] == "cold"


def test_min_size_keeps_small_files_from_promoting(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=True, min_size="8M")
    small = "solo/small.safetensors"  # 1 MiB, below min_size
    big = "solo/big.safetensors"  # 9 MiB, above it: shows the policy is live

    assert tu.read_through(mount.mountpoint / small) == hashes[small]
    assert tu.read_through(mount.mountpoint / "hf/big/config.json") == hashes["hf/big/config.json"]
    assert tu.read_through(mount.mountpoint / big) == hashes[big]
    report = tu.wait_state(mount.state_dir, big, "hot", timeout=20)
    time.sleep(1.0)  # any promotion started by the small opens has surely begun by now
    report = tu.status(mount.state_dir)
    assert tu.model_of(report, small)["state"] == "cold"
    assert tu.model_of(report, HF_MODEL)["state"] == "cold"
    assert {j["model"] for j in report["jobs"]} == {big}


@pytest.mark.slow
def test_cooldown_blocks_repromotion_after_demote(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=True, cooldown_s=300)
    small = "solo/small.safetensors"

    tu.read_through(mount.mountpoint / small)
    tu.wait_state(mount.state_dir, small, "hot")
    assert "1.0 MiB freed" in tu.cli_ok(mount.config, "demote", small).stdout
    assert tu.model_of(tu.status(mount.state_dir), small)["state"] == "cold"

    # Reopened right after its demotion: served (from cold), but not promoted again.
    assert tu.read_through(mount.mountpoint / small) == hashes[small]
    # A model that was never demoted still promotes on open: the policy is live.
    shard = "hf/big/model-00001-of-00002.safetensors"
    assert tu.read_through(mount.mountpoint / shard) == hashes[shard]
    tu.wait_state(mount.state_dir, HF_MODEL, "hot")
    time.sleep(1.0)
    report = tu.status(mount.state_dir)
    assert tu.model_of(report, small)["state"] == "cold"
    assert [j["model"] for j in report["jobs"]].count(small) == 1
    assert os.getxattr(mount.mountpoint / small, "user.tierfs.tier") == b"c"


# Errors ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_promote_errors_are_one_clear_line(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=False, start=False)

    # Nothing mounted yet.
    line = one_line_error(tu.cli(mount.config, "promote", HF_MODEL, "--wait"), "not mounted")
    assert str(mount.mountpoint) in line
    for command in (["demote", HF_MODEL], ["pin", HF_MODEL]):
        one_line_error(tu.cli(mount.config, *command), "not mounted")

    mount.start()
    one_line_error(tu.cli(mount.config, "promote", "no-such-model", "--wait"), "no-such-model")
    line = one_line_error(
        tu.cli(mount.config, "promote", HF_MODEL, "--tier", "ram9", "--wait"), "ram9"
    )
    assert "unknown tier" in line and "ram0" in line  # names the tiers there are
    one_line_error(tu.cli(mount.config, "pin", HF_MODEL, "--tier", "ram9"), "ram9")
    # Nothing was promoted or pinned by the failed commands.
    model = tu.model_of(tu.status(mount.state_dir), HF_MODEL)
    assert (model["state"], model["pinned"]) == ("cold", False)


# Pins and restarts -----------------------------------------------------------------------


def _hot_identity(mount: Mount, rels: list[str]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for rel in rels:
        backing = Path(os.fsdecode(os.getxattr(mount.mountpoint / rel, "user.tierfs.backing")))
        st = backing.stat()
        out[rel] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


@pytest.mark.slow
def test_pin_survives_restart_and_is_adopted(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=False)
    out = tu.cli_ok(mount.config, "pin", HF_MODEL, "--tier", "ram0").stdout
    assert f"pinned {HF_MODEL}" in out
    tu.wait_state(mount.state_dir, HF_MODEL, "hot")
    rels = list(HF_FILES)
    identity = _hot_identity(mount, rels)

    assert mount.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(mount.mountpoint)
    offline = tu.model_of(tu.cli_json(mount.config), HF_MODEL)
    assert (offline["pinned"], offline["state"]) == (True, "hot")
    log_before = len(mount.log_text())

    mount.start()
    report = tu.wait_idle(mount.state_dir)
    model = tu.model_of(report, HF_MODEL)
    assert (model["pinned"], model["pin_tier"], model["state"]) == (True, "ram0", "hot")
    restart_log = mount.log_text()[log_before:]
    adopted = re.search(r"(\d+) hot copies adopted", restart_log)
    assert adopted and int(adopted.group(1)) >= len(rels), restart_log
    # Adopted, not copied again: same files on the tier, untouched.
    assert _hot_identity(mount, rels) == identity
    assert all(j["bytes_total"] == 0 for j in report["jobs"]), report["jobs"]
    for rel in rels:
        assert os.getxattr(mount.mountpoint / rel, "user.tierfs.tier") == b"ram0"
        assert tu.read_through(mount.mountpoint / rel) == hashes[rel]


# Status ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_status_with_and_without_mount(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=False, start=False)
    size = 64 * MiB

    never = tu.cli_json(mount.config)
    assert never["running"] is False
    assert tu.tier_row(never, "ram0") | {"mounted": None} == {
        "name": "ram0",
        "path": str(tier_guard / "ram0"),
        "kind": "ram",
        "rank": 0,
        "size": size,
        "used": 0,
        "free": size,
        "mounted": None,
    }
    assert set(tu.states(never).values()) == {"cold"}
    assert "not mounted" in tu.cli_ok(mount.config, "status").stdout

    mount.start()
    for model in (HF_MODEL, "solo/big.safetensors"):
        assert tu.promote_wait(mount.state_dir, model)["state"] == "done"
    online = tu.cli_json(mount.config)
    assert online["running"] is True
    row = tu.tier_row(online, "ram0")
    expected_used = tu.hot_sum(online, "ram0")
    assert expected_used == sum(
        tu.model_of(online, m)["size"] for m in (HF_MODEL, "solo/big.safetensors")
    )
    assert (row["size"], row["used"], row["free"]) == (size, expected_used, size - expected_used)
    assert row["mounted"] is True
    text = tu.cli_ok(mount.config, "status").stdout
    assert "(mounted)" in text and HF_MODEL in text

    assert mount.stop() == 0
    offline = tu.cli_json(mount.config)
    assert offline["running"] is False
    assert offline["tiers"] == online["tiers"]
    assert tu.states(offline) == tu.states(online)
    assert {m["name"]: m["size"] for m in offline["models"]} == {
        m["name"]: m["size"] for m in online["models"]
    }
    assert "not mounted" in tu.cli_ok(mount.config, "status").stdout


def test_demote_of_cold_model_is_harmless(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = make_hf_store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, promote_on_open=False)
    assert "0 B freed" in tu.cli_ok(mount.config, "demote", HF_MODEL).stdout
    for rel in HF_FILES:
        assert tu.read_through(mount.mountpoint / rel) == hashes[rel]
    with pytest.raises(OSError) as exc:
        open(mount.mountpoint / "hf/big/config.json", "r+b")  # noqa: SIM115 - must fail
    assert exc.value.errno in (errno.EROFS, errno.EACCES)
