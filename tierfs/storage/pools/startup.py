"""Which pools a starting mount brings up, from the config and the recorded states.

A pool the user disconnected stays disconnected across restarts; an operation a crash
cut short is settled here: a disconnect is finished (the pool stays down), a resize
keeps whatever size the tmpfs has, a connect is made again like any start.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

from tierfs.config import TierConfig
from tierfs.mountinfo import mount_entry
from tierfs.states import PoolState
from tierfs.storage.catalog import Catalog
from tierfs.storage.catalog_pools import PoolRecord
from tierfs.storage.pools.local import fs_size
from tierfs.storage.tiers import TMPFS_SOURCE, Tier, offline_tier, prepare_tiers, remount_tmpfs

log = logging.getLogger(__name__)

_DOWN = {PoolState.DISCONNECTED, PoolState.DISCONNECTING, PoolState.FAILED}


def prepare_pools(catalog: Catalog, configs: Sequence[TierConfig]) -> list[Tier]:
    """Prepare the configured tiers, leaving down the pools that are down.

    Raises:
        TierError: a pool that should be up cannot be used (as `prepare_tiers`).
    """
    records = catalog.pool_records()
    online: list[TierConfig] = []
    offline: dict[str, Tier] = {}
    for config in configs:
        record = records.get(config.name)
        state = PoolState(record.state) if record else None
        configured = config.size
        if record is not None and record.size and record.configured == configured:
            config = _with_size(config, record)
        if state in _DOWN or _remote_down(config, state):
            offline[config.name] = offline_tier(config)
            _settle_down(catalog, config, record, configured)
        else:
            _grow_left_mounted(config)
            online.append(fit_to_filesystem(config) if config.remote else config)
    prepared = {t.name: t for t in prepare_tiers(online)}
    sizes = {c.name: c.size for c in configs}
    for tier in prepared.values():
        record = records.get(tier.name)
        if record is not None and record.state != PoolState.CONNECTED:
            up = PoolRecord(
                tier.name, str(PoolState.CONNECTED), size=tier.capacity, configured=sizes[tier.name]
            )
            catalog.set_pool(up)
    return [prepared.get(c.name) or offline[c.name] for c in configs]


def _grow_left_mounted(config: TierConfig) -> None:
    """Grow a tier tmpfs that an earlier run left mounted to a larger configured size."""
    entry = mount_entry(config.path)
    if entry is None or entry.source != TMPFS_SOURCE or config.kind != "ram":
        return
    if fs_size(config.path) < config.size:
        remount_tmpfs(config.path, config.size, f"tier {config.name!r} at {config.path}")


def _with_size(config: TierConfig, record: PoolRecord) -> TierConfig:
    size = record.size or config.size
    if record.state == PoolState.RESIZING and os.path.ismount(config.path):
        # Cut short: the remount happened or it did not; the tmpfs says which.
        size = fs_size(config.path)
    return config.model_copy(update={"size": size})


def _remote_down(config: TierConfig, state: PoolState | None) -> bool:
    # A remote pool tierfs brings up is up only once `pool connect` has mounted it.
    return config.remote is not None and not (
        state is PoolState.CONNECTED and os.path.ismount(config.path)
    )


def _settle_down(
    catalog: Catalog, config: TierConfig, record: PoolRecord | None, configured: int
) -> None:
    cut_short = record is not None and record.action == "disconnect"
    if config.kind == "ram" and cut_short and os.path.ismount(config.path):
        # A disconnect cut short: finish its unmount. The catalog's replicas there are
        # dropped by the start's recovery, which finds their files gone.
        done = subprocess.run(["umount", "-l", str(config.path)], capture_output=True)
        log.info("pool %s: finished its disconnect (rc %d)", config.name, done.returncode)
    if record is None or record.state != PoolState.DISCONNECTED:
        down = str(PoolState.DISCONNECTED)
        catalog.set_pool(PoolRecord(config.name, down, size=config.size, configured=configured))
    log.info("pool %s is disconnected (tierfs pool connect %s)", config.name, config.name)


def fit_to_filesystem(config: TierConfig) -> TierConfig:
    """A remote pool's config, its size cut to what its mounted file system holds.

    ext4 on a RAM disk holds a little less than the disk; such a pool offers what its
    file system holds rather than being refused as too small. Blocking (statvfs).
    """
    if config.kind != "remote" or not os.path.ismount(config.path):
        return config
    return config.model_copy(update={"size": min(config.size, fs_size(config.path))})
