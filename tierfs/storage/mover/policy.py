"""The promote-on-open policy: an open of a big enough file promotes its model.

It runs on the registry's `FileOpened` hints, in the mover's own tasks: nothing it does
can fail an open, and nothing it raises can reach the mover's nursery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from tierfs.errors import TierfsError
from tierfs.namespace.merge import Node
from tierfs.namespace.models import find_model
from tierfs.storage.mover.context import MoverContext
from tierfs.storage.mover.jobs import Job, JobBook

log = logging.getLogger(__name__)

PromoteFn = Callable[[str, str | None], Awaitable[Job]]


class PromoteOnOpen:
    """Decides whether an open promotes its model, and starts that promotion.

    Args:
        ctx: the mover's shared parts.
        jobs: promotions running (a model already moving is left alone).
        last_demoted: when each model was last demoted (the cooldown counts from there).
    """

    def __init__(self, ctx: MoverContext, jobs: JobBook, last_demoted: dict[str, float]) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.last_demoted = last_demoted

    def opened(self, node: Node, nursery: trio.Nursery, promote: PromoteFn) -> None:
        """An open happened: start a background promotion of its model if due."""
        policy = self.ctx.config.policy
        if not policy.promote_on_open or not self.ctx.tiers:
            return
        if node.attrs.size < policy.min_size:
            return
        for name in self.ctx.file_models.get(node.relpath, ()):
            if name in self.jobs.active:
                return
            demoted = self.last_demoted.get(name)
            if demoted is not None and time.time() - demoted < policy.cooldown_s:
                continue
            nursery.start_soon(self._promote_if_cold, name, promote)
            return

    async def _promote_if_cold(self, name: str, promote: PromoteFn) -> None:
        if name in self.jobs.active:
            return
        # This runs in the mover's nursery: anything raised here would take the daemon
        # down, and the model may vanish between the open and this task (a rescan).
        try:
            # The name came from the inventory a moment ago: no need to look for changes.
            model = find_model((await self.ctx.inventory()).models, name)
            placement = self.ctx.placement
            if all(placement.hot_backing(self.ctx.key_of(f)) is not None for f in model.files):
                return
            await promote(name, None)
        except TierfsError as exc:
            log.info("not promoting %s on open: %s", name, exc)
