"""Helpers for the tiering tests: tiers, the CLI, the catalog seen read-only, and checks.

Everything here looks at the real thing: the tmpfs the daemon mounted at a tier path, the
SQLite catalog opened read-only, bytes read through the FUSE mount hashed with xxh3.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, file_hash, wait_for, xxh
from tests.fuse.mounting import run_cli as cli
from tests.fuse.tierutil import MiB
from tierfs.control.client import ControlClient

TIER = "ram0"


def manual_tier_toml(path: Path, size: str = "64M") -> str:
    """The tier these tests use, with promotion on open off: models move only when told."""
    return tu.tier_toml(TIER, path, size) + tu.policy_toml(promote_on_open=False)


class TierDirs:
    """Tier directories for one test; every tmpfs tierfs mounted on them is detached."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[Path] = []

    def new(self, name: str = TIER) -> Path:
        path = self.base / f"tier-{name}"
        self.made.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.made:
            for _ in range(8):  # mounts may stack if a test mounted one by hand
                if not os.path.ismount(path):
                    break
                subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def control(mount: Mount) -> ControlClient:
    """A client of the running daemon's control socket (cheaper than a CLI process)."""
    return tu.client(mount.state_dir)


def model_state(mount: Mount, name: str) -> dict[str, object]:
    """The status row of model `name` on a running mount."""
    return tu.model_of(tu.status(mount.state_dir), name)


def wait_for_log(mount: Mount, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in mount.log_text():
            return
        if mount.process is not None and mount.process.poll() is not None:
            raise AssertionError(f"daemon exited before logging {text!r}:\n{mount.log_text()}")
        time.sleep(0.05)
    raise AssertionError(f"daemon did not log {text!r} within {timeout}s:\n{mount.log_text()}")


# The catalog, read-only ---------------------------------------------------------------


@dataclass(frozen=True)
class CatalogRow:
    file_id: int
    store: str
    relpath: str
    size: int
    mtime_ns: int
    xxh3: str | None


@dataclass(frozen=True)
class ReplicaRow:
    file_id: int
    tier: str
    path: str
    state: str
    size: int


def read_catalog(state_dir: Path) -> tuple[dict[int, CatalogRow], list[ReplicaRow]]:
    """Files and replicas, from a read-only connection (the daemon may be running)."""
    uri = f"file:{state_dir / 'catalog.sqlite'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        files = {
            row[0]: CatalogRow(*row)
            for row in db.execute("SELECT id, store, relpath, size, mtime_ns, xxh3 FROM files")
        }
        replicas = [
            ReplicaRow(*row)
            for row in db.execute("SELECT file_id, tier, path, state, size FROM replicas")
        ]
    return files, replicas


def files_under(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(Path(d) / n for d, _, names in os.walk(root) for n in names)


def assert_catalog_consistent(state_dir: Path, tier_path: Path) -> list[ReplicaRow]:
    """No half-done states, every hot replica's file there, nothing on the tier unlisted.

    Returns:
        The hot replicas.
    """
    files, replicas = read_catalog(state_dir)
    pending = [r for r in replicas if r.state != "hot"]
    assert not pending, f"replicas left in a transient state: {pending}"
    for replica in replicas:
        path = Path(replica.path)
        assert path.is_file(), f"hot replica {path} is missing from the tier"
        assert path.stat().st_size == replica.size == files[replica.file_id].size, replica
        assert tier_path / "hot" in path.parents, f"{path} is not under the tier's hot dir"
    temps = files_under(tier_path / ".tmp")
    assert not temps, f"temp files left on the tier: {temps}"
    listed = {Path(r.path) for r in replicas}
    unlisted = [p for p in files_under(tier_path / "hot") if p not in listed]
    assert not unlisted, f"files on the tier the catalog does not list: {unlisted}"
    return replicas


# The mount -----------------------------------------------------------------------------


def mounted_bytes(mountpoint: Path, relpath: str) -> bytes:
    """The whole of a file, read through the mount (its page cache left as it is)."""
    with open(mountpoint / relpath, "rb") as f:
        return f.read()


def assert_serves_cold_bytes(
    mount: Mount, cold_root: Path, hashes: dict[str, str], tier_path: Path
) -> dict[str, str]:
    """Every file reads with its cold hash; its backing is cold or a hot copy that hashes right.

    Returns:
        relpath -> the tier or store serving it (``user.tierfs.tier``).
    """
    served = {}
    for relpath, expected in hashes.items():
        got = xxh(mounted_bytes(mount.mountpoint, relpath))
        assert got == expected, f"{relpath}: read {got} through the mount, cold is {expected}"
        backing = Path(os.fsdecode(os.getxattr(mount.mountpoint / relpath, "user.tierfs.backing")))
        tier = os.getxattr(mount.mountpoint / relpath, "user.tierfs.tier").decode()
        if backing == cold_root / relpath:
            assert tier != TIER, f"{relpath}: tier {tier} but backing is the cold file"
        else:
            assert tier == TIER, f"{relpath}: backed by {backing}, tier {tier}"
            assert tier_path in backing.parents, f"{relpath}: backing {backing} is neither"
            assert file_hash(backing) == expected, f"{relpath}: hot copy {backing} is wrong"
        served[relpath] = tier
    return served


def assert_fsck_clean(config: Path, *extra: str) -> str:
    result = cli(config, "fsck", *extra)
    assert result.returncode == 0, (
        f"fsck exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    assert "fsck: clean" in result.stdout, f"fsck is not clean:\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def restart(mount: Mount, timeout: float = 30.0) -> Mount:
    """Start the daemon again on the same config and state, with no fault injected.

    After a kill -9 the stale mount is still listed (and stat of it is answered from the
    kernel's cache), so `Mount.start` may return before the new daemon has mounted: wait
    for the new daemon to say so in its log.
    """
    mount.extra_env = {}
    seen = len(mount.log_text())
    mount.start()
    wait_for(
        lambda: (
            f"mounted {mount.mountpoint} over" in mount.log_text()[seen:]
            or (mount.process is not None and mount.process.poll() is not None)
        ),
        timeout,
        what="the restarted daemon to mount",
    )
    assert mount.process is not None and mount.process.poll() is None, mount.log_text()[seen:]
    return mount


# Cold stores ----------------------------------------------------------------------------


HF_MODEL = "hf/mini"


def build_hf_model(cold: Path, seed: int = 7) -> dict[str, str]:
    """An HF model directory of ~5 MiB in four files; relpath -> xxh3."""
    rel = Path(HF_MODEL)
    hashes = {}
    config = json.dumps({"model_type": "llama", "hidden_size": 64}).encode()
    (cold / rel).mkdir(parents=True, exist_ok=True)
    (cold / rel / "config.json").write_bytes(config)
    hashes[f"{HF_MODEL}/config.json"] = xxh(config)
    for i, size in enumerate((3 * MiB + 123, 2 * MiB - 77, 40_000)):
        name = f"model-0000{i + 1}-of-00002.safetensors" if i < 2 else "tokenizer.json"
        hashes[f"{HF_MODEL}/{name}"] = tu.write_random(cold / rel / name, size, seed + i)
    return hashes
