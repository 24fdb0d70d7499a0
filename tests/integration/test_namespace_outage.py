"""A cold store that goes away (an NFS mount that left, something mounted over it) is an
outage, not a store that was emptied: its files stay listed, so hot copies keep serving."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.fuse.tierutil import bind_over
from tierfs.errors import NamespaceError
from tierfs.namespace.merge import Namespace
from tierfs.namespace.nodes import ROOT_INODE, ColdStore


def names(ns: Namespace, relpath: str) -> set[str]:
    return {n.name for n in ns.listdir(ns.resolve(relpath).inode)}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "cold"
    (root / "m").mkdir(parents=True)
    (root / "m" / "a.bin").write_bytes(b"a" * 100)
    (root / "m" / "b.bin").write_bytes(b"b" * 200)
    return root


def test_a_store_hidden_under_an_empty_mount_keeps_its_files(store: Path, tmp_path: Path) -> None:
    ns = Namespace([ColdStore("c", store)])
    a = ns.resolve("m/a.bin")
    assert names(ns, "m") == {"a.bin", "b.bin"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with bind_over(empty, store):
        ns.refresh()
        assert ns.resolve("m/a.bin").inode == a.inode
        assert names(ns, "m") == {"a.bin", "b.bin"}
        assert {n.name for n in ns.listdir(ROOT_INODE)} == {"m"}
        with pytest.raises(NamespaceError) as caught:
            ns.resolve("m/new.bin")
        assert caught.value.errno == errno.ENOENT
        assert ns.take_removed_entries() == []
    # Back again: what changed while it was away shows up, what stayed keeps its inode.
    (store / "m" / "c.bin").write_bytes(b"c")
    (store / "m" / "b.bin").unlink()
    ns.refresh()
    assert names(ns, "m") == {"a.bin", "c.bin"}
    assert ns.resolve("m/a.bin").inode == a.inode
    assert [name for _, name in ns.take_removed_entries()] == ["b.bin"]


def test_a_store_mounted_after_the_start_is_taken_as_the_store(store: Path, tmp_path: Path) -> None:
    ns = Namespace([ColdStore("c", store)])
    assert names(ns, "") == {"m"}
    late = tmp_path / "late"
    (late / "other").mkdir(parents=True)
    (late / "other" / "w.bin").write_bytes(b"w")
    with bind_over(late, store):
        ns.refresh()
        assert names(ns, "") == {"other"}
        assert ns.resolve("other/w.bin").attrs.size == 1


def test_files_removed_from_a_present_store_leave_the_listing(store: Path) -> None:
    ns = Namespace([ColdStore("c", store)])
    assert names(ns, "m") == {"a.bin", "b.bin"}
    (store / "m" / "a.bin").unlink()
    ns.refresh()
    assert names(ns, "m") == {"b.bin"}
