"""The mount's life: the composition root, the root nursery, signals, unmounting.

`Daemon` builds every layer's parts and wires them together. One trio run owns
everything: its root nursery holds the long-lived tasks (the FUSE request loop, the
prefetcher, the mover, the control API and periodic flushes); each signals readiness
with ``task_status.started()``.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pyfuse3
import trio

from tierfs.config import Config
from tierfs.control.api import make_app, serve_control
from tierfs.control.service import DaemonControl
from tierfs.control.web.auth import load_or_create_token
from tierfs.control.web.routes import web_routes
from tierfs.control.web.serve import serve_web
from tierfs.daemon.mounting import SERVING, mount_options, prepare_mountpoint, set_readahead
from tierfs.daemon.statedir import StateDir
from tierfs.errors import MountError
from tierfs.fuse.operations import TierfsOperations
from tierfs.fuse.passthrough import BackingRegistry, ReadMode, mode_after_init, mode_before_mount
from tierfs.fuse.readpath import ReadPath
from tierfs.mountinfo import mount_entry
from tierfs.namespace.merge import Namespace
from tierfs.namespace.nodes import ColdStore
from tierfs.ops.fsck import FsckReport, check
from tierfs.storage.catalog import Catalog
from tierfs.storage.mover import Mover
from tierfs.storage.mover.context import MoverContext
from tierfs.storage.placement import Placement
from tierfs.storage.pools import PoolManager, prepare_pools
from tierfs.storage.tiers import release_fresh_tiers

log = logging.getLogger(__name__)

ACCESS_FLUSH_INTERVAL_S = 5.0


class Daemon:
    """One mounted tierfs.

    Args:
        config: the validated configuration.
        on_ready: called once the mount serves.
        config_path: the file `config` came from, where settings changed live are saved.

    Raises:
        MountError: the mountpoint is missing, busy or already served.
        StateDirError: the state directory is untrusted, or another process holds it.
        TierError: a tier is missing, too small or not RAM-backed.
        CatalogError: the catalog is unusable.
        NamespaceError: the first cold store cannot be read.
    """

    def __init__(
        self,
        config: Config,
        on_ready: Callable[[], None] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._on_ready = on_ready
        # First, so that a tierfs already serving here is named as such rather than as
        # the holder of the state lock, and a refusal mounts no tier tmpfs.
        prepare_mountpoint(config.mountpoint)
        with ExitStack() as undo:
            # A refused start leaves nothing behind: no lock, no open catalog, no tier tmpfs.
            self.state = StateDir(config.state_dir, "tierfs mount")
            undo.callback(self.state.close)
            self.catalog = Catalog(config.catalog_path)
            undo.callback(self.catalog.close)
            self.web_token = (
                load_or_create_token(config.web_token_path) if config.web.listen else None
            )
            # Whatever may still refuse the start comes before the tiers, which mount tmpfs.
            self.namespace = Namespace([ColdStore(c.name, c.path) for c in config.cold])
            self.placement = Placement(self.catalog)
            self.readpath = ReadPath(config.read, push=pyfuse3.notify_store)
            self.operations = TierfsOperations(self.namespace, self.placement, self.readpath)
            self.tiers = prepare_pools(self.catalog, config.tier)
            undo.callback(release_fresh_tiers, self.tiers)
            self.mover = Mover(
                MoverContext(config, self.catalog, self.namespace, self.placement, self.tiers)
            )
            self.pools = PoolManager(
                self.catalog,
                self.tiers,
                self.mover,
                flush_access=self.placement.flush_access,
                configured={t.name: t.size for t in config.tier},
            )
            self.control = DaemonControl(self)
            undo.pop_all()
        self._mounted = False
        # Set when `require`d passthrough turned out unavailable after FUSE init.
        self._refused: MountError | None = None

    @property
    def stores(self) -> dict[str, Path]:
        return {c.name: c.path for c in self.config.cold}

    def recover(self) -> FsckReport:
        """Resolve what an earlier run left half-done, before anything is served."""
        report = check(self.catalog, self.tiers, self.stores, deep=False, repair=True)
        if report.clean:
            log.info("catalog consistent; %d hot copies adopted", report.adopted)
        else:
            log.warning(
                "recovered: %d findings repaired, %d hot copies adopted",
                len(report.findings),
                report.adopted,
            )
        return report

    def run(self) -> None:
        """Mount, serve until SIGINT or SIGTERM, then unmount.

        Raises:
            MountError: the mountpoint is unusable or the kernel refused the mount.
        """
        mountpoint = self.config.mountpoint
        try:
            try:
                self._plan_passthrough()
                self.recover()
                self._fuse_init(mountpoint)
            except BaseException:
                # A refused start leaves no tier tmpfs behind that it mounted itself.
                release_fresh_tiers(self.tiers)
                raise
            self._mounted = True
            log.info(
                "mounted %s over %s",
                mountpoint,
                ", ".join(f"{c.name}={c.path}" for c in self.config.cold),
            )
            trio.run(self._main)
            if self._refused is not None:
                raise self._refused
        finally:
            if self._mounted:
                pyfuse3.close(unmount=True)
                self._mounted = False
                log.info("unmounted %s", mountpoint)
            self.catalog.close()
            self.state.close()

    def _require_error(self, reason: str) -> MountError:
        return MountError(
            f'[read] passthrough = "require", but {reason}; not mounting {self.config.mountpoint}',
            path=str(self.config.mountpoint),
            errno=errno.EOPNOTSUPP,
        )

    def _plan_passthrough(self) -> None:
        """Decide, before mounting, whether to ask the kernel for passthrough.

        Raises:
            MountError: passthrough is required and cannot work here.
        """
        ops = self.operations
        planned = mode_before_mount(
            self.config.read.passthrough, writeback_cache=ops.enable_writeback_cache
        )
        if planned.mode is ReadMode.DAEMON and self.config.read.passthrough == "require":
            raise self._require_error(planned.reason)
        ops.read_mode = planned
        ops.enable_passthrough = planned.mode is ReadMode.PASSTHROUGH

    def _settle_read_mode(self) -> bool:
        """Once FUSE init is answered: use passthrough if the kernel granted it.

        Returns False if the mount must go (passthrough required but not granted).
        """
        mode = mode_after_init(self.operations.read_mode)
        if mode.mode is ReadMode.DAEMON and self.config.read.passthrough == "require":
            self._refused = self._require_error(mode.reason)
            return False
        self.operations.read_mode = mode
        if mode.mode is ReadMode.PASSTHROUGH:
            self.readpath.enable_passthrough(BackingRegistry())
            log.info("read mode: passthrough (the kernel reads backing copies directly)")
        else:
            log.info("read mode: served by the daemon, because %s", mode.reason)
        return True

    def _fuse_init(self, mountpoint: Path) -> None:
        try:
            pyfuse3.init(self.operations, str(mountpoint), mount_options(self.config))
        except RuntimeError as exc:
            raise MountError(
                f"the kernel refused to mount {mountpoint}: {exc}",
                path=str(mountpoint),
                errno=errno.EIO,
            ) from None

    async def _main(self) -> None:
        await self.placement.load()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.readpath.run)
            await nursery.start(self.operations.run)
            await nursery.start(self._watch_signals)
            await nursery.start(self.mover.run)
            await nursery.start(self.pools.run)
            app = make_app(self.control, web_routes(self.control))
            await nursery.start(serve_control, app, self.config.control_socket)
            if self.web_token is not None:
                await nursery.start(serve_web, app, self.config.web.listen, self.web_token)
            nursery.start_soon(self._flush_access)
            nursery.start_soon(self._after_init)
            try:
                await pyfuse3.main()
            finally:
                await self.placement.flush_access()
                nursery.cancel_scope.cancel()

    async def _after_init(self) -> None:
        """Finish setting up once the kernel has completed the FUSE handshake.

        The kernel resets the bdi readahead when it handles FUSE_INIT, which pyfuse3.main
        answers; a statfs of the mount returns only after that.
        """
        mountpoint = self.config.mountpoint
        await trio.to_thread.run_sync(os.statvfs, mountpoint)
        if not self._settle_read_mode():
            pyfuse3.terminate()
            return
        entry = mount_entry(mountpoint)
        if entry is not None:
            await trio.to_thread.run_sync(set_readahead, entry, self.config.read.readahead)
        log.info("%s %s", SERVING, mountpoint)
        if self._on_ready is not None:
            self._on_ready()

    async def _watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("%s received; unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async def _flush_access(self) -> None:
        while True:
            await trio.sleep(ACCESS_FLUSH_INTERVAL_S)
            await self.placement.flush_access()
