"""The pool manager: runs connect, disconnect and resize as recorded, followable steps.

One operation per pool at a time. Each step is idempotent and the catalog records the
pool's state and the last step done, so an operation cut short (a crash, a kill) is
finished by running it again: ``connect`` resumes, ``disconnect`` rolls back.
"""

from __future__ import annotations

import errno
import itertools
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from pydantic import ValidationError

from tierfs.config import TierConfig
from tierfs.errors import PoolError, TierfsError
from tierfs.faults import pause_point
from tierfs.states import OperationState, PoolState, StepState
from tierfs.storage.catalog import Catalog
from tierfs.storage.catalog_pools import PoolRecord
from tierfs.storage.pools import local
from tierfs.storage.pools.commands import Runner, run_command
from tierfs.storage.pools.emptying import Emptier, ModelMover
from tierfs.storage.pools.operation import Operation, Step, StepFn
from tierfs.storage.pools.remote import RemoteSteps, RemoteTarget
from tierfs.storage.pools.startup import fit_to_filesystem
from tierfs.storage.tiers import Tier, prepare_tier
from tierfs.units import format_size

log = logging.getLogger(__name__)

# A remote pool is unmounted for real (not lazily) before its device goes away: readers
# that still hold files open get this long to close them.
BUSY_TIMEOUT_S = 60.0
OPERATION_HISTORY = 100
_WORKING = {
    "connect": PoolState.CONNECTING,
    "disconnect": PoolState.DISCONNECTING,
    "resize": PoolState.RESIZING,
}


class PoolManager:
    """Connects, disconnects and resizes the pools of one mount.

    Args:
        catalog: where pool states are recorded.
        tiers: the mount's tiers (the same objects the mover places copies on).
        mover: demotes models off a pool.
        flush_access: writes the reads not yet in the catalog, whose access times
            decide which models leave a shrinking pool first.
        configured: each pool's size in the config file (recorded beside a resize's size,
            so that a later change of the config wins over the resize).
        runner, sysfs, devdir, which: how remote pools run commands and find their
            namespace; tests replace them (see docs/pools.md).
    """

    def __init__(
        self,
        catalog: Catalog,
        tiers: Sequence[Tier],
        mover: ModelMover,
        *,
        flush_access: Callable[[], Awaitable[None]] | None = None,
        configured: dict[str, int] | None = None,
        runner: Runner = run_command,
        sysfs: Path = Path("/sys"),
        devdir: Path = Path("/dev"),
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        self.catalog = catalog
        self._tiers = {t.name: t for t in sorted(tiers, key=lambda t: t.rank)}
        self.emptier = Emptier(catalog, mover, flush_access)
        self._configured = configured or {}
        self._remote_env = (runner, sysfs, devdir, which)
        self._states = {
            t.name: PoolState.CONNECTED if t.online else PoolState.DISCONNECTED for t in tiers
        }
        self._errors: dict[str, str | None] = {}
        self._operations: dict[int, Operation] = {}
        self._busy: dict[str, Operation] = {}
        self._ids = itertools.count(1)
        self._db_limiter = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the operations' tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db_limiter)

    # Reading ----------------------------------------------------------------------------

    def pool(self, name: str) -> Tier:
        """A pool by name.

        Raises:
            PoolError: no such pool (the message lists them).
        """
        tier = self._tiers.get(name)
        if tier is None:
            known = ", ".join(self._tiers) or "none configured"
            raise PoolError(f"unknown pool {name!r} (pools: {known})", errno=errno.ENOENT)
        return tier

    async def pools(self) -> list[dict[str, Any]]:
        """Every pool with its kind, size, use and state, fastest first."""
        usage = await self._db(self.catalog.tier_usage)
        out = []
        for tier in self._tiers.values():
            used = usage.get(tier.name, 0)
            size = tier.config.size
            out.append(
                {
                    "name": tier.name,
                    "kind": "remote" if tier.config.kind == "remote" else "tmpfs",
                    "path": str(tier.root),
                    "size": size,
                    "used": used,
                    "free": max(size - used, 0) if tier.online else 0,
                    "state": str(self._states[tier.name]),
                    "error": self._errors.get(tier.name),
                }
            )
        return out

    def operation(self, op_id: int) -> Operation | None:
        return self._operations.get(op_id)

    # Operations -------------------------------------------------------------------------

    async def connect(self, name: str) -> Operation:
        """Start bringing a pool up (again); a no-op's steps say what was there already.

        Raises:
            PoolError: no such pool, or an operation on it is running.
        """
        tier = self._idle(name)
        if tier.config.kind == "remote":
            r = self._remote(tier)
            steps = [
                ("tools", r.tools), ("ramdisk", r.ramdisk), ("export", r.export),
                ("connect", r.attach), ("namespace", r.namespace), ("mkfs", r.mkfs),
                ("mount", lambda: r.mount(tier.root)), ("open", lambda: self._open(tier)),
            ]  # fmt: skip
        else:
            steps = [("mount", lambda: local.mount(tier)), ("open", lambda: self._open(tier))]
        return await self._start(tier, "connect", steps)

    async def disconnect(self, name: str) -> Operation:
        """Start taking a pool down: demote what it holds, unmount, tear down.

        Raises:
            PoolError: no such pool, busy, or a model is pinned to it (nothing changed).
        """
        tier = self._idle(name)
        pinned = sorted(m for m, t in (await self._db(self.catalog.pins)).items() if t == name)
        if pinned:
            raise PoolError(
                f"pool {name!r} cannot be disconnected: {', '.join(pinned)} "
                f"{'is' if len(pinned) == 1 else 'are'} pinned to it (unpin or pin elsewhere)",
                errno=errno.EBUSY,
            )
        steps: list[tuple[str, StepFn]] = [
            ("close", lambda: self._close(tier)),
            ("demote", lambda: self.emptier.drain(tier)),
        ]
        if tier.config.kind == "remote":
            r = self._remote(tier)
            steps += [
                ("unmount", lambda: self._unmount_when_idle(tier)), ("disconnect", r.detach),
                ("unexport", r.unexport), ("ramdisk", r.remove_ramdisk),
            ]  # fmt: skip
        else:
            steps.append(("unmount", lambda: local.unmount(tier, lazy=True)))
        return await self._start(tier, "disconnect", steps)

    async def resize(self, name: str, size: int) -> Operation:
        """Start resizing a local pool; shrinking first demotes LRU unpinned models.

        Raises:
            PoolError: no such pool, busy, not connected, remote, or a size the config
                would refuse (too small, more than this machine's RAM).
        """
        tier = self._idle(name)
        if tier.config.kind == "remote":
            raise PoolError(
                f"pool {name!r} is remote: disconnect it, change its size in the config, "
                "and connect it again",
                errno=errno.EINVAL,
            )
        if self._states[name] is not PoolState.CONNECTED:
            raise PoolError(
                f"pool {name!r} is {self._states[name]}: connect it before resizing",
                errno=errno.EBUSY,
            )
        try:
            config = TierConfig.model_validate({**tier.config.model_dump(), "size": size})
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise PoolError(f"pool {name!r}: {message}", errno=errno.EINVAL) from None
        # Refused before anything starts: the operation would change nothing anyway.
        await self.emptier.pinned_fit(tier, size)
        steps: list[tuple[str, StepFn]] = [
            ("plan", lambda: self.emptier.plan_shrink(tier, size)),
            ("demote", lambda: self.emptier.shrink(tier, size)),
            ("release", lambda: local.wait_released(tier, size)),
            ("remount", lambda: self._remount(tier, config)),
        ]
        return await self._start(tier, "resize", steps)

    def _idle(self, name: str) -> Tier:
        tier = self.pool(name)
        config = tier.config
        if config.kind == "remote" and config.remote is None:
            raise PoolError(
                f"pool {name!r} has no [tier.remote] table: its owner mounts it, and tierfs "
                "does not bring it up, take it down or resize it",
                errno=errno.EINVAL,
            )
        if config.kind == "ram" and not config.mount_tmpfs:
            raise PoolError(
                f"pool {name!r} uses an existing directory (mount_tmpfs = false): tierfs "
                "does not mount, unmount or resize it",
                errno=errno.EINVAL,
            )
        running = self._busy.get(name)
        if running is not None:
            raise PoolError(
                f"pool {name!r} is busy: operation {running.id} ({running.action}) is running",
                errno=errno.EBUSY,
            )
        return tier

    def _remote(self, tier: Tier) -> RemoteSteps:
        runner, sysfs, devdir, which = self._remote_env
        return RemoteSteps(RemoteTarget.of(tier.config), runner, sysfs, devdir, which)

    async def _start(
        self, tier: Tier, action: str, steps: Sequence[tuple[str, StepFn]]
    ) -> Operation:
        assert self._nursery is not None, "PoolManager.run is not running"
        # Checked again with no await before the claim: the checks above awaited.
        self._idle(tier.name)
        op = Operation(next(self._ids), tier.name, action, [Step(n, fn) for n, fn in steps])
        self._operations[op.id] = op
        self._busy[tier.name] = op
        for old in sorted(self._operations)[:-OPERATION_HISTORY]:
            del self._operations[old]
        self._states[tier.name] = _WORKING[action]
        await self._record(tier, action, None)
        self._nursery.start_soon(self._execute, tier, op)
        log.info("pool %s: %s started (operation %d)", tier.name, action, op.id)
        return op

    async def _record(self, tier: Tier, action: str | None, step: str | None) -> None:
        record = PoolRecord(
            tier.name,
            str(self._states[tier.name]),
            action,
            step,
            tier.config.size,
            self._errors.get(tier.name),
            self._configured.get(tier.name),
        )
        with trio.CancelScope(shield=True):
            await self._db(self.catalog.set_pool, record)

    async def _execute(self, tier: Tier, op: Operation) -> None:
        current: Step | None = None
        try:
            for current in op.steps:
                current.state = StepState.RUNNING
                current.detail = await current.run()
                current.state = StepState.DONE
                log.info("pool %s: %s: %s", tier.name, current.name, current.detail)
                await self._record(tier, op.action, current.name)
                await trio.to_thread.run_sync(pause_point, f"pool_{op.action}_{current.name}")
            current = None
            op.state = OperationState.DONE
            self._errors[tier.name] = None
            self._states[tier.name] = (
                PoolState.DISCONNECTED if op.action == "disconnect" else PoolState.CONNECTED
            )
        except Exception as exc:  # an operation must never take the mount down
            if isinstance(exc, TierfsError):
                op.error = str(exc)
            else:
                op.error = f"internal error: {exc!r}"
                log.exception("pool %s: %s failed unexpectedly", tier.name, op.action)
            op.state = OperationState.FAILED
            self._errors[tier.name] = op.error
            self._states[tier.name] = self._after_failure(tier, op)
            if current is not None:
                current.state = StepState.FAILED
                current.detail = op.error
            for step in op.steps:
                if step.state is StepState.PENDING:
                    step.state = StepState.SKIPPED
            log.warning("pool %s: %s failed: %s", tier.name, op.action, op.error)
        finally:
            await self._record(tier, op.action, None)
            del self._busy[tier.name]
            op.ended.set()

    def _after_failure(self, tier: Tier, op: Operation) -> PoolState:
        if op.action == "resize" and not any(
            s.name == "remount" and s.state is StepState.DONE for s in op.steps
        ):
            # Nothing was remounted: the pool serves at its old size.
            tier.capacity = tier.config.size
            return PoolState.CONNECTED
        return PoolState.FAILED

    # Steps ------------------------------------------------------------------------------

    async def _open(self, tier: Tier) -> str:
        config = tier.config
        prepared = await trio.to_thread.run_sync(lambda: prepare_tier(fit_to_filesystem(config)))
        tier.adopt(prepared)
        return f"pool {tier.name} takes copies ({format_size(tier.capacity)})"

    async def _close(self, tier: Tier) -> str:
        tier.take_offline()
        return f"no new copies go to {tier.name}"

    async def _remount(self, tier: Tier, config: TierConfig) -> str:
        detail = await local.remount(tier, config.size)
        tier.config = config
        tier.capacity = config.size
        return detail

    async def _unmount_when_idle(self, tier: Tier) -> str:
        error: PoolError | None = None
        with trio.move_on_after(BUSY_TIMEOUT_S):
            while True:
                try:
                    return await local.unmount(tier, lazy=False)
                except PoolError as exc:
                    error = exc
                await trio.sleep(0.5)
        assert error is not None
        raise error
