"""Pools: tiers with a lifecycle at runtime (connect, disconnect, resize).

A local pool is a tmpfs this host mounts; a remote pool is another host's RAM disk,
exported over NVMe-oF and mounted here. Each operation is a list of idempotent steps
whose progress is recorded in the catalog, so that after a crash the next connect
resumes and the next disconnect rolls back. Models leave a pool through the mover's
public ``demote``; nothing here touches hot copies itself.
"""

from tierfs.storage.pools.manager import PoolManager
from tierfs.storage.pools.startup import prepare_pools

__all__ = ["PoolManager", "prepare_pools"]
