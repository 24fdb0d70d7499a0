"""Fixtures that mount tierfs for real (helpers: tests/fuse/mounting.py).

A fixture waits until the daemon serves, and always unmounts afterwards, even when the
daemon died or the test failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.mounting import Mount, MountFactory, write_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fuse)


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """Make and start mounts over given cold stores; all are unmounted at teardown."""
    mounts: list[Mount] = []

    def make(
        cold: list[tuple[str, Path]],
        *,
        extra: str = "",
        top: str = "",
        name: str = "m",
        start: bool = True,
        env: dict[str, str] | None = None,
        passthrough: str | None = None,
    ) -> Mount:
        base = tmp_path / f"tierfs-{name}"
        mountpoint = base / "mnt"
        mountpoint.mkdir(parents=True, exist_ok=True)
        config = write_config(
            base / "config.toml",
            mountpoint=mountpoint,
            state_dir=base / "state",
            cold=cold,
            extra=extra,
            top=top,
            passthrough=passthrough,
        )
        mount = Mount(
            config=config,
            mountpoint=mountpoint,
            state_dir=base / "state",
            log=base / "tierfs.log",
            extra_env=env or {},
        )
        mounts.append(mount)
        return mount.start() if start else mount

    yield make
    for mount in mounts:
        mount.cleanup()


@pytest.fixture
def cold_store(tmp_path: Path) -> Path:
    root = tmp_path / "cold"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def demo_cold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo cold store (HF dir, hub cache, Ollama store, GGUF), built once."""
    from tierfs.ops.demo import build_demo_store

    root = tmp_path_factory.mktemp("demo") / "cold"
    build_demo_store(root)
    return root


@pytest.fixture
def demo_mount(mount_factory: MountFactory, demo_cold: Path) -> Mount:
    return mount_factory([("demo", demo_cold)], name="demo")
