"""The merged namespace: union of directories, first store wins, rescans, stable inodes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tierfs.errors import NamespaceError
from tierfs.namespace.inventory import NamespaceTreeView
from tierfs.namespace.merge import Namespace
from tierfs.namespace.models import EntryKind
from tierfs.namespace.nodes import ROOT_INODE, ColdStore, Kind


@pytest.fixture
def two_stores(fs: FakeFilesystem) -> Namespace:
    fs.create_file("/a/models/shared/config.json", contents="A")
    fs.create_file("/a/models/only-a.bin", contents="aaaa")
    fs.create_file("/a/clash", contents="file in a")
    fs.create_file("/b/models/shared/weights.bin", contents="B" * 10)
    fs.create_file("/b/models/shared/config.json", contents="BB")
    fs.create_file("/b/models/only-b.bin", contents="bbbbbb")
    fs.create_file("/b/clash/inside", contents="x")
    fs.create_symlink("/b/models/link", "only-a.bin")
    for d in ("/a", "/a/models", "/a/models/shared", "/b", "/b/models", "/b/models/shared"):
        os.utime(d, ns=(OLD, OLD))
    return Namespace([ColdStore("a", Path("/a")), ColdStore("b", Path("/b"))])


OLD = 1_000_000_000_000_000_000


def changed_dir(path: str) -> None:
    """What a real file system does to a directory's mtime when an entry comes or goes."""
    mtime = os.stat(path).st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(mtime, mtime))


def names(ns: Namespace, rel: str) -> list[str]:
    return sorted(n.name for n in ns.listdir(ns.resolve(rel).inode))


def test_directories_merge_across_stores(two_stores: Namespace) -> None:
    assert names(two_stores, "") == ["clash", "models"]
    assert names(two_stores, "models") == ["link", "only-a.bin", "only-b.bin", "shared"]
    assert names(two_stores, "models/shared") == ["config.json", "weights.bin"]


def test_first_store_wins_a_conflict_and_it_is_recorded(two_stores: Namespace) -> None:
    config = two_stores.resolve("models/shared/config.json")
    assert config.store == "a"
    assert config.source == Path("/a/models/shared/config.json")
    assert config.attrs.size == 1
    clash = two_stores.resolve("clash")
    assert clash.kind is Kind.FILE and clash.store == "a"
    conflicts = {c.relpath: c for c in two_stores.conflicts()}
    assert set(conflicts) == {"clash", "models/shared/config.json"}
    assert conflicts["clash"].winner == "a"
    assert conflicts["clash"].losers == ("b",)
    # Merged directories are not conflicts.
    assert "models" not in conflicts


def test_conflict_is_logged_once(two_stores: Namespace, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        two_stores.resolve("models/shared/config.json")
        two_stores.listdir(two_stores.resolve("models/shared").inode)
    changed_dir("/b/models/shared")  # force a rescan
    two_stores.listdir(two_stores.resolve("models/shared").inode)
    logged = [r for r in caplog.records if "config.json" in r.getMessage()]
    assert len(logged) == 1


def test_symlinks_are_kept_verbatim(two_stores: Namespace) -> None:
    link = two_stores.resolve("models/link")
    assert link.kind is Kind.SYMLINK
    assert link.target == "only-a.bin"


def test_inodes_are_stable_across_rescans(fs: FakeFilesystem, two_stores: Namespace) -> None:
    before = {rel: two_stores.resolve(rel).inode for rel in ("models", "models/only-b.bin")}
    fs.create_file("/b/models/new.bin", contents="n")
    changed_dir("/b/models")
    assert "new.bin" in names(two_stores, "models")
    after = {rel: two_stores.resolve(rel).inode for rel in ("models", "models/only-b.bin")}
    assert before == after
    assert two_stores.resolve("models/new.bin").inode not in before.values()
    assert two_stores.resolve("").inode == ROOT_INODE


def test_new_files_are_found_on_lookup_miss(fs: FakeFilesystem, two_stores: Namespace) -> None:
    models = two_stores.resolve("models")
    two_stores.listdir(models.inode)
    fs.create_file("/a/models/late.bin", contents="late")
    changed_dir("/a/models")
    node = two_stores.lookup(models.inode, "late.bin")
    assert node.attrs.size == 4
    assert node.store == "a"


def test_removed_files_leave_the_listing(fs: FakeFilesystem, two_stores: Namespace) -> None:
    assert "only-b.bin" in names(two_stores, "models")
    os.unlink("/b/models/only-b.bin")
    changed_dir("/b/models")
    assert "only-b.bin" not in names(two_stores, "models")
    with pytest.raises(NamespaceError) as caught:
        two_stores.resolve("models/only-b.bin")
    assert caught.value.errno == errno.ENOENT


def test_a_changed_cold_file_is_reported(fs: FakeFilesystem, two_stores: Namespace) -> None:
    node = two_stores.resolve("models/only-a.bin")
    assert two_stores.take_changed_files() == []
    Path("/a/models/only-a.bin").write_text("grown, longer")
    changed_dir("/a/models")
    two_stores.listdir(two_stores.resolve("models").inode)
    changed = two_stores.take_changed_files()
    assert [c.inode for c in changed] == [node.inode]
    assert two_stores.resolve("models/only-a.bin").attrs.size == len("grown, longer")


def test_missing_entries_and_non_directories_are_errors(two_stores: Namespace) -> None:
    with pytest.raises(NamespaceError) as missing:
        two_stores.resolve("models/nope")
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(NamespaceError) as not_dir:
        two_stores.listdir(two_stores.resolve("models/only-a.bin").inode)
    assert not_dir.value.errno == errno.ENOTDIR
    with pytest.raises(NamespaceError):
        two_stores.get(99999)


def test_tree_view_serves_model_detection(two_stores: Namespace) -> None:
    view = NamespaceTreeView(two_stores)
    assert ("shared", EntryKind.DIR) in view.listdir("models")
    assert view.stat("models/shared/weights.bin") == (EntryKind.FILE, 10)
    assert view.readlink("models/link") == "only-a.bin"
    assert view.read_text("models/shared/config.json", 100) == "A"
    with pytest.raises(OSError):
        view.stat("models/none")


def test_a_missing_store_root_is_refused(fs: FakeFilesystem) -> None:
    with pytest.raises(NamespaceError, match="cold store 'x'"):
        Namespace([ColdStore("x", Path("/does/not/exist"))])


def test_unchanged_directories_are_not_rescanned(fs: FakeFilesystem, two_stores: Namespace) -> None:
    models = two_stores.resolve("models")
    two_stores.listdir(models.inode)
    # An entry that appears without the directory's mtime moving stays unseen: proof
    # that the listing comes from the scan, not from a fresh readdir each time.
    fs.create_file("/a/models/sneaky.bin", contents="s")
    os.utime("/a/models", ns=(OLD, OLD))
    assert "sneaky.bin" not in names(two_stores, "models")


def test_a_recently_modified_directory_is_read_again(
    fs: FakeFilesystem, two_stores: Namespace
) -> None:
    models = two_stores.resolve("models")
    import time

    now = time.time_ns()
    os.utime("/a/models", ns=(now, now))
    two_stores.listdir(models.inode)
    # Same mtime as at the scan, but the scan was within the racy window of it.
    fs.create_file("/a/models/same-tick.bin", contents="s")
    os.utime("/a/models", ns=(now, now))
    assert "same-tick.bin" in names(two_stores, "models")
