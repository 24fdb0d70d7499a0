"""The merged namespace: one tree over several read-only cold stores.

Directories merge; for anything else the first store (in config order) wins a name and
the clash is recorded once as a `Conflict`. Directories are scanned lazily and scanned
again when a backing directory's mtime moves, so files added to a cold store appear
without a remount.

Inode numbers are handed out once per path and never reused while the namespace lives.
A node's attributes are a snapshot of the winning cold entry; they change only when
that entry itself changed underneath, and `Namespace.changed_files` then reports it so
the caller can invalidate the kernel's cache.

All methods that touch the disk are blocking: the FUSE layer calls them through a
worker thread. One lock serialises mutation, so the methods are thread-safe.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from tierfs.errors import NamespaceError
from tierfs.namespace.nodes import (
    ROOT_INODE,
    Attrs,
    ColdStore,
    Conflict,
    Kind,
    Node,
    join,
    kind_of,
)

log = logging.getLogger(__name__)

RACY_WINDOW_NS = 2_000_000_000


class Namespace:
    """A lazily scanned merge of cold stores.

    Args:
        stores: the cold stores, highest priority first.

    Raises:
        NamespaceError: a store's root is not a readable directory.
    """

    def __init__(self, stores: list[ColdStore]) -> None:
        if not stores:
            raise NamespaceError("at least one cold store is needed", errno=errno.EINVAL)
        self.stores = stores
        self._lock = threading.RLock()
        self._nodes: dict[int, Node] = {}
        self._inode_by_path: dict[str, int] = {}
        self._next_inode = ROOT_INODE + 1
        self._conflicts: dict[str, Conflict] = {}
        self._changed: list[Node] = []
        self._removed: list[tuple[int, str]] = []
        # (st_dev, st_ino) of each store's root as last seen, and the stores now away.
        self._root_ids: dict[str, tuple[int, int]] = {}
        self._away: set[str] = set()
        self._stores_away()
        # Bumped whenever a directory's entries change, so model detection knows to rescan.
        self.generation = 0
        first = stores[0]
        try:
            root_stat = os.stat(first.root)
        except OSError as exc:
            raise NamespaceError(
                f"cold store {first.name!r} at {first.root}: {exc.strerror}",
                path=str(first.root),
                errno=exc.errno or errno.EIO,
            ) from None
        self._inode_by_path[""] = ROOT_INODE
        self._nodes[ROOT_INODE] = Node(
            inode=ROOT_INODE,
            parent=ROOT_INODE,
            name="",
            relpath="",
            kind=Kind.DIR,
            attrs=Attrs.from_stat(root_stat),
            store=first.name,
            source=first.root,
        )

    # Lookups ---------------------------------------------------------------------------

    def get(self, inode: int) -> Node:
        """The node of a known inode.

        Raises:
            NamespaceError: ENOENT for an inode this namespace never handed out.
        """
        node = self._nodes.get(inode)
        if node is None:
            raise NamespaceError(f"no inode {inode}", errno=errno.ENOENT)
        return node

    def lookup(self, parent: int, name: str) -> Node:
        """Find `name` in directory `parent`, rescanning it once on a miss.

        Raises:
            NamespaceError: ENOTDIR or ENOENT.
        """
        with self._lock:
            directory = self._dir(parent)
            children = self._children(directory)
            inode = children.get(name)
            if inode is None and self._stale(directory):
                self._scan(directory)
                inode = self._children(directory).get(name)
            if inode is None:
                raise NamespaceError(
                    f"{join(directory.relpath, name)}: no such entry",
                    path=join(directory.relpath, name),
                    errno=errno.ENOENT,
                )
            return self._nodes[inode]

    def listdir(self, inode: int) -> list[Node]:
        """The entries of a directory, rescanned first if a backing directory changed.

        Raises:
            NamespaceError: ENOTDIR or ENOENT.
        """
        with self._lock:
            directory = self._dir(inode)
            if directory.children is not None and self._stale(directory):
                self._scan(directory)
            return [self._nodes[i] for i in self._children(directory).values()]

    def resolve(self, relpath: str) -> Node:
        """The node at a POSIX relative path, without following symlinks.

        Raises:
            NamespaceError: ENOENT or ENOTDIR.
        """
        node = self._nodes[ROOT_INODE]
        for part in (p for p in relpath.split("/") if p):
            node = self.lookup(node.inode, part)
        return node

    def refresh(self) -> None:
        """Rescan every directory seen so far whose backing directories changed.

        What was added to a cold store then appears without anyone listing its directory
        through the mount first. Costs a stat per known directory and store.
        """
        with self._lock:
            for node in [n for n in self._nodes.values() if n.children is not None]:
                if self._stale(node):
                    self._scan(node)

    def conflicts(self) -> list[Conflict]:
        """Names served by one store while others provide them too, as found so far."""
        with self._lock:
            return sorted(self._conflicts.values(), key=lambda c: c.relpath)

    def take_changed_files(self) -> list[Node]:
        """Files whose cold entry changed since they were first presented."""
        with self._lock:
            changed, self._changed = self._changed, []
        return changed

    def take_removed_entries(self) -> list[tuple[int, str]]:
        """(parent inode, name) of entries that left their directory."""
        with self._lock:
            removed, self._removed = self._removed, []
        return removed

    def stat_totals(self) -> tuple[int, int, int, int]:
        """(block size, total blocks, free blocks, files) summed over the stores."""
        bsize = 4096
        blocks = free = files = 0
        seen: set[int] = set()
        for store in self.stores:
            try:
                st = os.statvfs(store.root)
                dev = os.stat(store.root).st_dev
            except OSError as exc:
                log.warning("statvfs of cold store %s failed: %s", store.name, exc.strerror)
                continue
            # Two stores on one file system must not count its capacity twice.
            if dev in seen:
                continue
            seen.add(dev)
            blocks += st.f_blocks * st.f_frsize // bsize
            free += st.f_bavail * st.f_frsize // bsize
            files += st.f_files
        return bsize, blocks, free, files

    # Scanning --------------------------------------------------------------------------

    def _dir(self, inode: int) -> Node:
        node = self.get(inode)
        if not node.is_dir:
            raise NamespaceError(f"{node.relpath}: not a directory", errno=errno.ENOTDIR)
        return node

    def _children(self, directory: Node) -> dict[str, int]:
        if directory.children is None:
            self._scan(directory)
        assert directory.children is not None
        return directory.children

    def _backing_dirs(self, relpath: str) -> Iterator[tuple[ColdStore, Path, os.stat_result]]:
        for store in self.stores:
            path = store.root / relpath if relpath else store.root
            try:
                st = os.stat(path) if not relpath else os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                yield store, path, st

    def _stale(self, directory: Node) -> bool:
        stamp = tuple(
            (s.name, st.st_mtime_ns) for s, _, st in self._backing_dirs(directory.relpath)
        )
        if stamp != directory.stamp:
            return True
        # Directory mtimes tick coarsely (and NFS may round them): a change made in the
        # same tick as our scan leaves the mtime as it was. So a scan that happened close
        # to the newest mtime proves nothing, and the directory is read again.
        newest = max((mtime for _, mtime in stamp), default=0)
        return directory.scanned_ns - newest < RACY_WINDOW_NS

    def _stores_away(self) -> set[str]:
        """The cold stores that went away since they were first seen.

        A store is away when its root cannot be read, or when another, empty directory
        stands there now: an NFS or BeeGFS mount that left, or something mounted over it.
        That is an outage, not a store that was emptied, so rescans keep what they knew
        and hot copies go on serving. A new root with entries (a store mounted after the
        start) is taken as the store.
        """
        away: set[str] = set()
        for store in self.stores:
            try:
                st = os.stat(store.root)
            except OSError:
                if store.name in self._root_ids:
                    away.add(store.name)
                continue
            root_id = (st.st_dev, st.st_ino)
            if self._root_ids.setdefault(store.name, root_id) != root_id:
                try:
                    with os.scandir(store.root) as it:
                        empty = next(it, None) is None
                except OSError:
                    empty = True
                if empty:
                    away.add(store.name)
                else:
                    self._root_ids[store.name] = root_id
        for name in sorted(away - self._away):
            log.warning(
                "cold store %r went away (its root is unreadable or another, empty directory);"
                " its files stay listed and hot copies keep serving until it is back",
                name,
            )
        for name in sorted(self._away - away):
            log.info("cold store %r is back", name)
        self._away = away
        return away

    def _scan(self, directory: Node) -> None:
        if directory.children is not None and self._stores_away():
            # Keep the listing (and the stale stamp, so the scan is tried again later).
            return
        directory.scanned_ns = time.time_ns()
        entries: dict[str, tuple[ColdStore, Path, os.stat_result]] = {}
        providers: dict[str, list[str]] = {}
        stamp: list[tuple[str, int]] = []
        for store, path, st in self._backing_dirs(directory.relpath):
            stamp.append((store.name, st.st_mtime_ns))
            try:
                with os.scandir(path) as it:
                    listing = list(it)
            except OSError as exc:
                log.warning("cannot list %s in cold store %s: %s", path, store.name, exc.strerror)
                continue
            for entry in listing:
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if kind_of(est.st_mode) is None:
                    continue
                name = entry.name
                providers.setdefault(name, []).append(store.name)
                # The first store wins a name; the others are recorded as conflicts below.
                entries.setdefault(name, (store, Path(entry.path), est))
        children: dict[str, int] = {}
        for name, (store, source, est) in sorted(entries.items()):
            relpath = join(directory.relpath, name)
            children[name] = self._present(directory, name, relpath, store, source, est)
            winner_is_dir = stat.S_ISDIR(est.st_mode)
            losers = tuple(
                p
                for p in providers[name][1:]
                if not (winner_is_dir and self._is_dir_in(p, relpath))
            )
            if losers and relpath not in self._conflicts:
                self._conflicts[relpath] = Conflict(relpath, store.name, losers)
                log.warning(
                    "name conflict: %s is served from cold store %r; also in %s",
                    relpath,
                    store.name,
                    ", ".join(repr(x) for x in losers),
                )
        # A first scan adds nothing anyone has seen; only a change to a known listing counts.
        if directory.children is not None and set(directory.children) != set(children):
            self.generation += 1
            for name, inode in directory.children.items():
                if children.get(name) != inode:
                    self._removed.append((directory.inode, name))
        directory.children = children
        directory.stamp = tuple(stamp)

    def _is_dir_in(self, store_name: str, relpath: str) -> bool:
        store = next(s for s in self.stores if s.name == store_name)
        try:
            return stat.S_ISDIR(os.lstat(store.root / relpath).st_mode)
        except OSError:
            return False

    def _present(
        self,
        directory: Node,
        name: str,
        relpath: str,
        store: ColdStore,
        source: Path,
        est: os.stat_result,
    ) -> int:
        kind = kind_of(est.st_mode)
        assert kind is not None
        attrs = Attrs.from_stat(est)
        inode = self._inode_by_path.get(relpath)
        if inode is not None:
            node = self._nodes[inode]
            if node.kind is kind:
                if kind is Kind.FILE and node.attrs.identity != attrs.identity:
                    # The cold file changed underneath: present the new identity and let
                    # the caller drop cached pages and hot copies of the old one.
                    node.attrs = attrs
                    node.store, node.source = store.name, source
                    self._changed.append(node)
                elif kind is Kind.SYMLINK:
                    node.target = os.readlink(source)
                    node.attrs = attrs
                return inode
            # A file became a directory or the like: it is a new entry, with a new inode.
            del self._inode_by_path[relpath]
        inode = self._next_inode
        self._next_inode += 1
        target = None
        if kind is Kind.SYMLINK:
            try:
                target = os.readlink(source)
            except OSError:
                target = ""
        self._inode_by_path[relpath] = inode
        self._nodes[inode] = Node(
            inode=inode,
            parent=directory.inode,
            name=name,
            relpath=relpath,
            kind=kind,
            attrs=attrs,
            store=store.name,
            source=source,
            target=target,
        )
        return inode

    def refresh_file(self, node: Node) -> Node:
        """Re-stat a file's cold source; a change is reported like a rescan would.

        Returns:
            The node, with fresh attributes.
        """
        try:
            est = os.lstat(node.source)
        except OSError:
            return node
        attrs = Attrs.from_stat(est)
        if attrs.identity != node.attrs.identity:
            with self._lock:
                node.attrs = replace(attrs)
                self._changed.append(node)
        return node
