"""The mount's life: checks before mounting, the root nursery, signals, unmounting.

One trio run owns everything. Its root nursery holds the long-lived tasks (the FUSE
request loop, the prefetcher, periodic flushes, and in later layers the mover and the
control API); each signals readiness with ``task_status.started()``.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from tierfs.config import Config
from tierfs.control.api import serve_control
from tierfs.control.status import build_report
from tierfs.daemon.statedir import StateDir
from tierfs.errors import MountError
from tierfs.fuse.operations import TierfsOperations
from tierfs.fuse.passthrough import BackingRegistry, ReadMode, mode_after_init, mode_before_mount
from tierfs.fuse.readpath import ReadPath
from tierfs.mountinfo import MountEntry, mount_entry
from tierfs.namespace.merge import ColdStore, Namespace
from tierfs.ops.faults import pause_point
from tierfs.ops.fsck import FsckReport, check
from tierfs.storage.catalog import Catalog
from tierfs.storage.mover import Mover
from tierfs.storage.placement import Placement
from tierfs.storage.pools import PoolManager, prepare_pools
from tierfs.storage.tiers import release_fresh_tiers

log = logging.getLogger(__name__)

FSNAME = "tierfs"
# Logged once the mount answers requests; `spawn_daemon` and the tests wait for it.
SERVING = "serving"
ACCESS_FLUSH_INTERVAL_S = 5.0


def is_tierfs(entry: MountEntry | None) -> bool:
    return (
        entry is not None
        and entry.fstype in (f"fuse.{FSNAME}", "fuse")
        and (entry.source == FSNAME)
    )


def lazy_unmount(mountpoint: Path) -> None:
    """Detach a mount, even a stale one whose daemon died.

    Raises:
        MountError: neither fusermount3 nor umount could detach it.
    """
    commands = [["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]]
    errors = []
    for command in commands:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{command[0]}: {exc}")
            continue
        if result.returncode == 0:
            return
        errors.append(result.stderr.strip() or f"{command[0]} exited {result.returncode}")
    raise MountError(
        f"cannot unmount {mountpoint}: {'; '.join(errors)}", path=str(mountpoint), errno=errno.EBUSY
    )


def prepare_mountpoint(mountpoint: Path) -> None:
    """Refuse a missing, busy or already mounted mountpoint; recover a stale tierfs one.

    Raises:
        MountError: naming the mountpoint and what is wrong with it.
    """
    entry = mount_entry(mountpoint)
    if entry is not None:
        if not is_tierfs(entry):
            raise MountError(
                f"mountpoint {mountpoint} is busy: {entry.fstype} from {entry.source} "
                "is mounted there",
                path=str(mountpoint),
                errno=errno.EBUSY,
            )
        if _is_alive(mountpoint):
            raise MountError(
                f"tierfs is already mounted at {mountpoint}; unmount it first "
                f"(tierfs unmount {mountpoint})",
                path=str(mountpoint),
                errno=errno.EBUSY,
            )
        log.warning("%s holds a stale tierfs mount (its daemon died); detaching it", mountpoint)
        lazy_unmount(mountpoint)
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(
            f"mountpoint {mountpoint} does not exist (create it with: mkdir -p {mountpoint})",
            path=str(mountpoint),
            errno=errno.ENOENT,
        ) from None
    except OSError as exc:
        raise MountError(
            f"mountpoint {mountpoint}: {exc.strerror}", path=str(mountpoint), errno=exc.errno or 5
        ) from None
    if not os.path.isdir(mountpoint) or not (st.st_mode & 0o040000):
        raise MountError(
            f"mountpoint {mountpoint} is not a directory", path=str(mountpoint), errno=errno.ENOTDIR
        )


def _is_alive(mountpoint: Path) -> bool:
    """Whether a FUSE mount still has a daemon answering it.

    statfs of a mount whose daemon died fails at once with ENOTCONN; a stat would not,
    since the kernel answers it from cached attributes. The probe runs in a child process
    with a timeout, so a daemon that is alive but wedged cannot hang us.
    """
    try:
        result = subprocess.run(
            [sys.executable, "-c", f"import os; os.statvfs({str(mountpoint)!r})"],
            capture_output=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return True
    return result.returncode == 0


def mount_options(config: Config) -> set[str]:
    options = {f"fsname={FSNAME}", f"subtype={FSNAME}", "ro", "noatime"}
    if config.default_permissions:
        options.add("default_permissions")
    if config.allow_other:
        options.add("allow_other")
    return options


def set_readahead(entry: MountEntry, readahead: int) -> bool:
    """Raise the kernel readahead of the mount's bdi: 128 KiB requests are slow."""
    path = Path("/sys/class/bdi") / entry.major_minor / "read_ahead_kb"
    try:
        path.write_text(str(max(readahead // 1024, 4)))
    except OSError as exc:
        log.warning("cannot set readahead via %s: %s", path, exc.strerror)
        return False
    log.debug("readahead of %s set to %d KiB", entry.mountpoint, readahead // 1024)
    return True


class Daemon:
    """One mounted tierfs.

    Args:
        config: the validated configuration.
        on_ready: called once the mount serves.

    Raises:
        MountError: the mountpoint is missing, busy or already served.
        StateDirError: the state directory is untrusted, or another process holds it.
        TierError: a tier is missing, too small or not RAM-backed.
        CatalogError: the catalog is unusable.
        NamespaceError: the first cold store cannot be read.
    """

    def __init__(self, config: Config, on_ready: Callable[[], None] | None = None) -> None:
        self.config = config
        self._on_ready = on_ready
        # First, so that a tierfs already serving here is named as such rather than as
        # the holder of the state lock, and a refusal mounts no tier tmpfs.
        prepare_mountpoint(config.mountpoint)
        self.state = StateDir(config.state_dir, "tierfs mount")
        try:
            # The catalog first: a catalog we must refuse leaves no tier tmpfs mounted behind.
            self.catalog = Catalog(config.catalog_path)
        except BaseException:
            self.state.close()
            raise
        try:
            # The cold stores before the tiers, for the same reason.
            self.namespace = Namespace([ColdStore(c.name, c.path) for c in config.cold])
            self.tiers = prepare_pools(self.catalog, config.tier)
        except BaseException:
            self.catalog.close()
            self.state.close()
            raise
        self.placement = Placement(self.catalog)
        self.readpath = ReadPath(config.read, push=pyfuse3.notify_store)
        self.operations = TierfsOperations(self.namespace, self.placement, self.readpath)
        self.mover = Mover(config, self.catalog, self.namespace, self.placement, self.tiers)
        self.pools = PoolManager(
            self.catalog,
            self.tiers,
            self.mover,
            flush_access=self.placement.flush_access,
            configured={t.name: t.size for t in config.tier},
        )
        self.control = DaemonControl(self)
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
            await nursery.start(self._watch_signals)
            await nursery.start(self.mover.run)
            await nursery.start(self.pools.run)
            await nursery.start(serve_control, self.control, self.config.control_socket)
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


def spawn_daemon(config_path: Path, config: Config, log_file: Path, timeout: float = 60.0) -> int:
    """Start ``tierfs mount --foreground`` detached, and wait until it has mounted.

    Returns:
        The daemon's pid.

    Raises:
        MountError: the daemon exited or did not mount in time; its last log lines are
            in the message.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = log_file.stat().st_size if log_file.exists() else 0
    ready = f"{SERVING} {config.mountpoint}".encode()
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tierfs", "mount", "--foreground", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_file, "rb") as f:
            f.seek(start)
            if ready in f.read():
                return process.pid
        if process.poll() is not None:
            break
        time.sleep(0.05)
    else:
        process.terminate()
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    raise MountError(
        f"the daemon did not mount {config.mountpoint}: " + " | ".join(tail),
        path=str(config.mountpoint),
        errno=errno.EIO,
    )


class DaemonControl:
    """The control API's view of a running daemon (see `tierfs.control.api`)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._fsck_lock = trio.Lock()

    async def status(self) -> dict[str, Any]:
        d = self.daemon
        inventory = await d.mover.inventory(refresh=True)
        jobs = [j.to_json() for j in d.mover.jobs()]
        reasons = d.mover.cold_reasons()
        # Opens reach the catalog only at the next flush; the status shows them at once.
        accessed = d.placement.last_accesses()
        # Pools resized or disconnected at runtime report their sizes as they are now.
        config = d.config.model_copy(update={"tier": [t.config for t in d.tiers]})
        report = await trio.to_thread.run_sync(
            lambda: build_report(
                config,
                inventory,
                d.catalog,
                d.namespace,
                jobs=jobs,
                cold_reasons=reasons,
                last_access=accessed,
                running=True,
            )
        )
        report["reads"] = d.operations.stats()
        return dict(report)

    def jobs(self) -> list[dict[str, Any]]:
        return [j.to_json() for j in self.daemon.mover.jobs()]

    def job(self, job_id: int) -> dict[str, Any] | None:
        job = self.daemon.mover.job(job_id)
        return job.to_json() if job else None

    async def promote(self, model: str, tier: str | None) -> dict[str, Any]:
        job = await self.daemon.mover.promote(model, tier, reason="command")
        return job.to_json()

    async def demote(self, model: str) -> dict[str, Any]:
        found = await self.daemon.mover.model(model)
        freed = await self.daemon.mover.demote(model)
        return {"model": found.name, "freed": freed}

    async def pin(self, model: str, tier: str | None) -> dict[str, Any]:
        job = await self.daemon.mover.pin(model, tier)
        return job.to_json()

    async def unpin(self, model: str) -> dict[str, Any]:
        found = await self.daemon.mover.model(model)
        return {"model": found.name, "unpinned": await self.daemon.mover.unpin(model)}

    async def fsck(self, deep: bool) -> dict[str, Any]:
        d = self.daemon
        token = trio.lowlevel.current_trio_token()
        withdrawn: list[tuple[str, str]] = []

        def withdraw(store: str, relpath: str) -> None:
            withdrawn.append((store, relpath))
            trio.from_thread.run_sync(d.placement.set_hot, (store, relpath), None, trio_token=token)

        async with self._fsck_lock:
            await d.placement.flush_access()

            def run_check() -> FsckReport:
                pause_point("fsck_checking")
                # Copies may start, finish or be evicted while this runs: `live` leaves
                # those in flight alone, whenever they began.
                return check(
                    d.catalog,
                    d.tiers,
                    d.stores,
                    deep=deep,
                    repair=True,
                    live=True,
                    withdraw=withdraw,
                )

            report = await trio.to_thread.run_sync(run_check)
            # Copies replaced or removed by the check are re-read from the catalog.
            await d.placement.load()
            # Pages read from a withdrawn copy (a corrupt one, say) stay in the kernel's
            # cache, and keep_cache serves them to every later open: drop them.
            for store, relpath in withdrawn:
                await d.operations.forget_cached(store, relpath)
        return report.to_json()

    async def pools(self) -> list[dict[str, Any]]:
        return await self.daemon.pools.pools()

    async def pool_action(self, name: str, action: str, size: int | None) -> dict[str, Any]:
        pools = self.daemon.pools
        if action == "connect":
            op = await pools.connect(name)
        elif action == "disconnect":
            op = await pools.disconnect(name)
        else:
            assert size is not None
            op = await pools.resize(name, size)
        return op.to_json()

    def pool_operation(self, op_id: int) -> dict[str, Any] | None:
        op = self.daemon.pools.operation(op_id)
        return op.to_json() if op else None

    async def metrics(self) -> dict[str, Any]:
        d = self.daemon
        s = d.readpath.stats
        usage = await trio.to_thread.run_sync(d.catalog.tier_usage)
        return {
            "tierfs_read_bytes_total": (
                "counter",
                "Bytes served by FUSE reads",
                [({}, s.read_bytes)],
            ),
            "tierfs_read_requests_total": (
                "counter",
                "FUSE read requests",
                [({}, s.read_requests)],
            ),
            "tierfs_prefetch_bytes_total": (
                "counter",
                "Bytes pushed into the page cache",
                [({}, s.pushed_bytes)],
            ),
            "tierfs_opens_total": ("counter", "Files opened", [({}, s.opens)]),
            "tierfs_opens_by_mode_total": (
                "counter",
                "Files opened, by who serves their reads: the kernel (passthrough) or the daemon",
                [
                    ({"mode": "passthrough"}, s.passthrough_opens),
                    ({"mode": "daemon"}, s.daemon_opens),
                ],
            ),
            "tierfs_read_mode": (
                "gauge",
                "1 for the read mode of the mount (passthrough or daemon)",
                [({"mode": m.value}, int(d.operations.read_mode.mode is m)) for m in ReadMode],
            ),
            "tierfs_tier_capacity_bytes": (
                "gauge",
                "Tier capacity",
                [({"tier": t.name}, t.capacity) for t in d.tiers] or [({"tier": ""}, 0)],
            ),
            "tierfs_tier_used_bytes": (
                "gauge",
                "Bytes claimed on a tier",
                [({"tier": t.name}, usage.get(t.name, 0)) for t in d.tiers] or [({"tier": ""}, 0)],
            ),
            "tierfs_copies_active": (
                "gauge",
                "Promotions in flight",
                [({}, sum(1 for j in d.mover.jobs() if j.active))],
            ),
        }
