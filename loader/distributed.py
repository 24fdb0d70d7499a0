"""Splitting a load over the ranks of a torch.distributed process group.

Each rank reads a contiguous, byte-balanced share of the schedule (``plan.assign_owners``),
so every byte comes off storage once; the owner then broadcasts each request's bytes and
every rank assembles every tensor.  Collectives are issued in schedule order on all ranks
while each rank's reader threads run ahead on its own share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from loader.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    group: Any
    rank: int
    world: int
    backend: str

    def global_rank(self, rank_in_group: int) -> int:
        import torch.distributed as dist

        if self.group is None or self.group is dist.group.WORLD:
            return rank_in_group
        return int(dist.get_global_rank(self.group, rank_in_group))

    def broadcast(self, tensor: torch.Tensor, owner: int) -> None:
        """Broadcast ``tensor`` in place from group rank ``owner`` to every rank."""
        import torch.distributed as dist

        if tensor.numel() == 0:
            return
        dist.broadcast(tensor, src=self.global_rank(owner), group=self.group)


def make_context(process_group: Any) -> DistContext | None:
    """Wrap a process group; ``None`` (or a group of one) means a local load.

    Raises:
        ConfigError: a group was given but torch.distributed is not initialised.
    """
    if process_group is None:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError("given, but torch.distributed is not initialised", key="process_group")
    group = None if process_group is True else process_group
    world = dist.get_world_size(group)
    if world <= 1:
        return None
    rank = dist.get_rank(group)
    backend = str(dist.get_backend(group))
    log.debug("distributed load: rank %d of %d (%s)", rank, world, backend)
    return DistContext(group, rank, world, backend)
