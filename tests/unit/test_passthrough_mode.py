"""Which read mode a mount asks for, and why not passthrough (pure logic)."""

from __future__ import annotations

import pyfuse3
import pytest

from tierfs.fuse import passthrough
from tierfs.fuse.passthrough import ReadMode, mode_after_init, mode_before_mount


@pytest.fixture
def capable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that could use passthrough: patched pyfuse3, libfuse 3.17, CAP_SYS_ADMIN."""
    monkeypatch.setattr(passthrough, "libfuse_version", lambda: 317)
    monkeypatch.setattr(passthrough, "_has_cap_sys_admin", lambda: True)


def test_auto_asks_the_kernel(capable: None) -> None:
    assert mode_before_mount("auto", writeback_cache=False).mode is ReadMode.PASSTHROUGH


def test_off_never_asks(capable: None) -> None:
    info = mode_before_mount("off", writeback_cache=False)
    assert info.mode is ReadMode.DAEMON and "off" in info.reason


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("old-libfuse", "libfuse 3.14 is older than 3.17"),
        ("no-cap", "CAP_SYS_ADMIN"),
        ("writeback", "writeback cache"),
        ("unpatched", "no passthrough API"),
    ],
)
def test_each_reason_is_named(
    capable: None, monkeypatch: pytest.MonkeyPatch, change: str, needle: str
) -> None:
    writeback = change == "writeback"
    if change == "old-libfuse":
        monkeypatch.setattr(passthrough, "libfuse_version", lambda: 314)
    elif change == "no-cap":
        monkeypatch.setattr(passthrough, "_has_cap_sys_admin", lambda: False)
    elif change == "unpatched":
        monkeypatch.delattr(pyfuse3, "passthrough_open")
    info = mode_before_mount("require", writeback_cache=writeback)
    assert info.mode is ReadMode.DAEMON
    assert needle in info.reason


def test_a_kernel_that_did_not_grant_it_falls_back(
    capable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = mode_before_mount("auto", writeback_cache=False)
    monkeypatch.setattr(pyfuse3, "passthrough_active", lambda: False)
    after = mode_after_init(planned)
    assert after.mode is ReadMode.DAEMON and "kernel" in after.reason
    monkeypatch.setattr(pyfuse3, "passthrough_active", lambda: True)
    assert mode_after_init(planned).mode is ReadMode.PASSTHROUGH
