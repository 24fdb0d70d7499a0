"""What the inventory finds and how the CLI shows it: models added after the mount, models
of empty files, and names that look like rich markup."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.crashutil import (
    TIER,
    TierDirs,
    cli,
    control,
    manual_tier_toml,
    model_state,
)
from tests.fuse.mounting import Mount, MountFactory
from tests.fuse.tierutil import promote_wait, write_random

pytestmark = pytest.mark.timeout(120)

MARKUP_NAMES = ["[/bold]oops.gguf", "[red]x[/red].gguf", ":thumbs_up: [link=x]y.gguf"]


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[TierDirs]:
    dirs = TierDirs(tmp_path)
    yield dirs
    dirs.cleanup()


def _age(*paths: Path) -> None:
    """Backdate directories, so that only a real change makes tierfs read them again."""
    then = time.time() - 3600
    for path in paths:
        os.utime(path, (then, then))


def _mount(factory: MountFactory, cold: Path, tiers: TierDirs) -> Mount:
    return factory([("cold", cold)], extra=manual_tier_toml(tiers.new()))


def test_names_that_look_like_markup_are_shown_as_they_are(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    for i, name in enumerate(MARKUP_NAMES):
        write_random(cold_store / name, 4096 + i, seed=i)
    mount = _mount(mount_factory, cold_store, tiers)
    result = cli(mount.config, "status")
    assert result.returncode == 0, result.stderr
    for name in MARKUP_NAMES:
        assert name in result.stdout, f"{name!r} not shown as it is:\n{result.stdout}"
    for name in MARKUP_NAMES:
        result = cli(mount.config, "promote", "--wait", name)
        assert result.returncode == 0, result.stderr
        assert f"{name} is hot on {TIER}" in result.stdout, result.stdout
        assert "Traceback" not in result.stderr
    result = cli(mount.config, "status")
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in MARKUP_NAMES), result.stdout


def test_a_model_of_an_empty_file_is_promoted_and_hot(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    (cold_store / "empty.gguf").write_bytes(b"")
    mount = _mount(mount_factory, cold_store, tiers)
    result = cli(mount.config, "promote", "--wait", "empty.gguf")
    assert result.returncode == 0, result.stdout + result.stderr
    state = model_state(mount, "empty.gguf")
    assert (state["state"], state["tiers"]) == ("hot", [TIER]), state
    assert os.getxattr(mount.mountpoint / "empty.gguf", "user.tierfs.tier") == TIER.encode()
    assert (mount.mountpoint / "empty.gguf").read_bytes() == b""


def test_models_added_after_the_mount_are_found_without_listing_them(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    write_random(cold_store / "first.gguf", 4096, seed=1)
    (cold_store / "org").mkdir()
    _age(cold_store / "org", cold_store)
    mount = _mount(mount_factory, cold_store, tiers)
    with control(mount) as client:
        assert [m["name"] for m in client.status()["models"]] == ["first.gguf"]
        # Added straight to the cold store; nobody lists a directory through the mount.
        write_random(cold_store / "later.gguf", 8192, seed=2)
        write_random(cold_store / "org" / "deeper.gguf", 8192, seed=3)
        names = {m["name"] for m in client.status()["models"]}
        assert names == {"first.gguf", "later.gguf", "org/deeper.gguf"}, names
    assert promote_wait(mount.state_dir, "org/deeper.gguf")["state"] == "done"
    assert model_state(mount, "org/deeper.gguf")["state"] == "hot"
