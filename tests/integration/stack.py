"""The daemon's parts wired together in-process, without a FUSE mount.

Catalog, namespace, placement, read path, operations, mover and the control façade are
the real classes over a real SQLite file and real directories; only the kernel is
missing: nothing is pushed into a page cache, and what the operations would tell the
kernel about its caches is recorded (`RecordingKernel`). A tier is a plain directory (the
RAM check is the mount's business), so these tests run as any user, in milliseconds.

Tests drive the FUSE operations themselves (`open_file`, `read_file`): the same
requests the kernel would send, answered by the same code.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio
import xxhash

from tierfs.config import Config, config_from_dict
from tierfs.control.service import DaemonControl
from tierfs.fuse.operations import TierfsOperations
from tierfs.fuse.readpath import PushFn, ReadPath
from tierfs.namespace.merge import Namespace
from tierfs.namespace.nodes import ColdStore
from tierfs.storage.catalog import Catalog
from tierfs.storage.mover import Mover
from tierfs.storage.mover.context import MoverContext
from tierfs.storage.placement import Placement
from tierfs.storage.pools import PoolManager
from tierfs.storage.records import ReplicaState
from tierfs.storage.tiers import HOT_DIR, TMP_DIR, Tier


@dataclass
class RecordingKernel:
    """Stands in for the kernel's caches: records what the operations ask it to forget."""

    entries: list[tuple[int, str]] = field(default_factory=list)
    inodes: list[int] = field(default_factory=list)

    def forget_entry(self, parent_inode: int, name: str) -> None:
        self.entries.append((parent_inode, name))

    def forget_inode(self, inode: int) -> None:
        self.inodes.append(inode)


@dataclass
class Stack:
    """The parts of one mount, as `tierfs.daemon.service.Daemon` wires them (and names them, so
    that `DaemonControl` drives a stack as it drives a daemon: both are `DaemonParts`)."""

    config: Config
    catalog: Catalog
    namespace: Namespace
    placement: Placement
    readpath: ReadPath
    operations: TierfsOperations
    mover: Mover
    tiers: list[Tier]
    kernel: RecordingKernel
    pools: PoolManager
    # Where live settings would be saved; an in-process stack has no config file.
    config_path: Path | None = None

    @property
    def stores(self) -> dict[str, Path]:
        return {c.name: c.path for c in self.config.cold}

    @property
    def control(self) -> DaemonControl:
        return DaemonControl(self)


def stack_config(
    base: Path,
    *,
    tier_size: int = 64 << 20,
    tiers: list[int] | None = None,
    strategy: str | None = None,
    read: dict[str, Any] | None = None,
    **policy: Any,
) -> Config:
    """A config with one cold store (``base/cold``) and tiers ``base/ram0``, ``ram1``...

    Args:
        tier_size: the size of the one tier, when `tiers` is not given.
        tiers: the sizes of several tiers, fastest first.
        strategy: the ``[placement] strategy``.
    """
    cold = base / "cold"
    cold.mkdir(exist_ok=True)
    tier_table = []
    for rank, size in enumerate(tiers or [tier_size]):
        tier = base / f"ram{rank}"
        for sub in (HOT_DIR, TMP_DIR):
            (tier / sub).mkdir(parents=True, exist_ok=True)
        tier_table.append({"name": f"ram{rank}", "path": str(tier), "size": size, "rank": rank})
    return config_from_dict(
        {
            "mountpoint": str(base / "mnt"),
            "state_dir": str(base / "state"),
            "cold": [{"name": "c", "path": str(cold)}],
            "tier": tier_table,
            "policy": policy,
            "placement": {"strategy": strategy} if strategy else {},
            "read": read or {},
        }
    )


@asynccontextmanager
async def running_stack(
    config: Config,
    push: PushFn | None = None,
    tiers_of: Callable[[Catalog], list[Tier]] | None = None,
) -> AsyncIterator[Stack]:
    """Build the parts for `config`, start the mover, and stop it on exit.

    Args:
        config: as from `stack_config`.
        push: stands in for ``pyfuse3.notify_store`` (prefetch is off without one).
        tiers_of: makes the tiers from the catalog (as a daemon's start does); by default
            each configured tier is a plain directory taken as tmpfs.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(config.catalog_path)
    try:
        if tiers_of is not None:
            tiers = tiers_of(catalog)
        else:
            tiers = [Tier(t, capacity=t.size, fstype="tmpfs") for t in config.tier]
        namespace = Namespace([ColdStore(c.name, c.path) for c in config.cold])
        placement = Placement(catalog)
        await placement.load()
        readpath = ReadPath(config.read, push=push)
        kernel = RecordingKernel()
        operations = TierfsOperations(namespace, placement, readpath, kernel)
        mover = Mover(MoverContext(config, catalog, namespace, placement, tiers))
        pools = PoolManager(catalog, tiers, mover, flush_access=placement.flush_access)
        async with trio.open_nursery() as nursery:
            await nursery.start(readpath.run)
            await nursery.start(operations.run)
            await nursery.start(mover.run)
            await nursery.start(pools.run)
            yield Stack(
                config,
                catalog,
                namespace,
                placement,
                readpath,
                operations,
                mover,
                tiers,
                kernel,
                pools,
            )
            nursery.cancel_scope.cancel()
    finally:
        catalog.close()


async def open_file(stack: Stack, relpath: str) -> pyfuse3.FileInfo:
    """Open a file through the operations, as the kernel would (a lookup, then an open)."""
    inode = await lookup_path(stack, relpath)
    return await stack.operations.open(inode, os.O_RDONLY, pyfuse3.RequestContext())


async def lookup_path(stack: Stack, relpath: str) -> int:
    """The inode of a path, looked up name by name through the operations."""
    inode = pyfuse3.ROOT_INODE
    for name in relpath.split("/"):
        inode = (await stack.operations.lookup(inode, name.encode())).st_ino
    return inode


async def tier_xattr(stack: Stack, relpath: str) -> str:
    """The ``user.tierfs.tier`` the operations answer for a file (the loader's contract)."""
    inode = await lookup_path(stack, relpath)
    value = await stack.operations.getxattr(inode, b"user.tierfs.tier", pyfuse3.RequestContext())
    return value.decode()


async def read_file(stack: Stack, relpath: str) -> tuple[pyfuse3.FileInfo, bytes]:
    """Open, read whole and release a file through the operations."""
    info = await open_file(stack, relpath)
    size = stack.readpath.handle(info.fh).size
    chunks = []
    for offset in range(0, size, 1 << 20):
        chunks.append(await stack.operations.read(info.fh, offset, 1 << 20))
    await stack.operations.release(info.fh)
    return info, b"".join(chunks)


MiB = 1 << 20


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def cold_file(base: Path, relpath: str, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path = base / "cold" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def hot_models(stack: Stack) -> dict[str, str]:
    """relpath -> xxh3 of its hot copy, for every file the catalog calls hot."""
    records = {r.id: r for r in stack.catalog.files()}
    return {
        records[r.file_id].relpath: xxh(Path(r.path).read_bytes())
        for r in stack.catalog.replicas()
        if r.state is ReplicaState.HOT
    }


async def promote(stack: Stack, name: str) -> None:
    job = await stack.mover.promote(name, reason="command")
    await job.ended.wait()
    assert str(job.state) == "done", job.error


def hot_copies(stack: Stack) -> dict[str, dict[str, str]]:
    """relpath -> {tier: xxh3 of the copy there}, for every replica the catalog calls hot."""
    records = {r.id: r for r in stack.catalog.files()}
    out: dict[str, dict[str, str]] = {}
    for r in stack.catalog.replicas():
        if r.state is ReplicaState.HOT:
            copies = out.setdefault(records[r.file_id].relpath, {})
            copies[r.tier] = xxh(Path(r.path).read_bytes())
    return out
