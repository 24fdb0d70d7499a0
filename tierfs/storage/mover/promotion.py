"""Promotion: choose a tier by the placement strategy, claim the files, copy them in.

The strategies (``[placement] strategy``), read at each decision so a change applies to
the next promotion:

- ``fastest-fit``: the fastest tier with room now; only when no tier has room, the
  fastest one where evicting LRU unpinned models makes room.
- ``fill-first``: the fastest tier where evicting makes room; each evicted model moves
  down to the next slower tier with room (a verified tier-to-tier copy), else to cold.
- ``round-robin``: the tiers with room now, in turn; when none has room, as fastest-fit.

A tier named by the user (``promote --tier``, ``pin --tier``) is used as is, evicting there.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

import trio

from tierfs.config import format_size
from tierfs.errors import TierError, TierfsError
from tierfs.namespace.merge import Kind
from tierfs.namespace.models import Model
from tierfs.states import JobState
from tierfs.storage.copier import CopyCancelled
from tierfs.storage.mover.context import ModelFile, MoverContext
from tierfs.storage.mover.eviction import Evictor
from tierfs.storage.mover.jobs import Job, JobBook
from tierfs.storage.mover.transfer import copy_claimed
from tierfs.storage.records import ReplicaState
from tierfs.storage.tiers import Tier

log = logging.getLogger(__name__)


class Promoter:
    """Runs promotion jobs.

    Args:
        ctx: the mover's shared parts.
        jobs: where jobs are recorded.
        evictor: makes room.
        copy_limiter: bounds the copies in flight.
    """

    def __init__(
        self,
        ctx: MoverContext,
        jobs: JobBook,
        evictor: Evictor,
        copy_limiter: trio.CapacityLimiter,
    ) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.evictor = evictor
        self.copy_limiter = copy_limiter
        # Space decisions (what fits, what to evict, what to claim) happen one at a time.
        self.space_lock = trio.Lock()
        self.cold_reasons: dict[str, str] = {}
        self._round_robin = 0

    async def run_job(self, job: Job, model: Model, tier: Tier | None) -> None:
        """Promote `model` (onto `tier`, or where the strategy says); never raises."""
        ctx = self.ctx
        try:
            job.state = JobState.RUNNING
            files = await self._resolve_files(model)
            async with self.space_lock:
                chosen, todo = await self._choose(model, files, tier)
                if chosen is None:
                    reason = self._no_room_reason(model, [tier] if tier else ctx.tiers)
                    self.cold_reasons[model.name] = reason
                    await ctx.db(ctx.catalog.set_cold_reason, model.name, reason)
                    log.warning("%s stays cold: %s", model.name, reason)
                    raise TierError(reason, path=model.name, errno=errno.ENOSPC)
                job.tier = chosen.name
                claimed = []
                for f in todo:
                    path = str(chosen.hot_path(*f.key))
                    if await ctx.db(
                        ctx.catalog.begin_copy, f.record.id, chosen.name, path, f.record.size
                    ):
                        claimed.append(f)
            job.total = sum(f.record.size for f in claimed)
            if self.cold_reasons.pop(model.name, None) is not None:
                await ctx.db(ctx.catalog.set_cold_reason, model.name, None)
            log.info(
                "promoting %s to %s (%s, %d files; %s)",
                model.name,
                chosen.name,
                format_size(job.total),
                len(claimed),
                job.reason,
            )
            async with trio.open_nursery() as copies:
                for f in claimed:
                    copies.start_soon(self._copy_one, job, f, chosen)
            if job.cancel.is_set():
                job.state = JobState.CANCELLED
            elif job.error is not None:
                job.state = JobState.FAILED
            else:
                job.state = JobState.DONE
                log.info("%s is hot on %s", model.name, chosen.name)
        except CopyCancelled:
            job.state = JobState.CANCELLED
        except TierfsError as exc:
            job.state = JobState.FAILED
            job.error = str(exc)
            if not isinstance(exc, TierError):
                log.error("promotion of %s failed: %s", model.name, exc)
        except Exception as exc:  # a job must never take the mount down
            job.state = JobState.FAILED
            job.error = f"internal error: {exc!r}"
            log.exception("promotion of %s failed unexpectedly", model.name)
        finally:
            self.jobs.finish(job)

    async def _choose(
        self, model: Model, files: list[ModelFile], tier: Tier | None
    ) -> tuple[Tier | None, list[ModelFile]]:
        """The tier the model goes to (room made there), and the files still to copy."""
        hot = await self.ctx.db(self.ctx.catalog.replicas)
        hot_keys = {(r.file_id, r.tier) for r in hot if r.state is ReplicaState.HOT}
        hot_anywhere = {r.file_id for r in hot if r.state is ReplicaState.HOT}

        def todo(candidate: Tier) -> list[ModelFile]:
            return [
                f
                for f in files
                if (f.record.id, candidate.name) not in hot_keys
                and (tier is not None or f.record.id not in hot_anywhere)
            ]

        def needed(candidate: Tier) -> int:
            return sum(f.record.size for f in todo(candidate))

        evictor = self.evictor
        if tier is not None:
            found = await evictor.make_room(tier, needed(tier), protect=model.name)
            return (tier, todo(tier)) if found else (None, [])
        tiers = self.ctx.tiers
        strategy = self.ctx.config.placement.strategy
        if strategy == "fill-first":
            for candidate in tiers:
                if await evictor.make_room(
                    candidate, needed(candidate), protect=model.name, move_down=True
                ):
                    return candidate, todo(candidate)
            return None, []
        order = tiers
        if strategy == "round-robin":
            start = self._round_robin % len(tiers)
            order = tiers[start:] + tiers[:start]
        for candidate in order:
            if await evictor.has_room(candidate, needed(candidate)):
                self._round_robin = tiers.index(candidate) + 1
                return candidate, todo(candidate)
        for candidate in tiers:
            if await evictor.make_room(candidate, needed(candidate), protect=model.name):
                return candidate, todo(candidate)
        return None, []

    async def _copy_one(self, job: Job, f: ModelFile, tier: Tier) -> None:
        error = await copy_claimed(
            self.ctx,
            f,
            tier,
            source=f.node.source,
            limiter=self.copy_limiter,
            progress=job.add,
            cancelled=job.cancel,
        )
        if error is not None:
            job.error = job.error or error
            log.error("promotion of %s failed: %s", job.model, error)

    async def _resolve_files(self, model: Model) -> list[ModelFile]:
        ctx = self.ctx

        def resolve() -> list[ModelFile]:
            out = []
            for relpath in model.files:
                node = ctx.namespace.resolve(relpath)
                if node.kind is not Kind.FILE:
                    continue
                record = ctx.catalog.sync_file(node.store, node.relpath, node.attrs.identity)
                out.append(ModelFile(node, record))
            return out

        files = await ctx.db(resolve)
        for f in files:
            ctx.placement.note_record(f.record)
        return files

    def _no_room_reason(self, model: Model, tiers: Iterable[Tier]) -> str:
        sizes = ", ".join(f"{t.name} holds {format_size(t.capacity)}" for t in tiers)
        return (
            f"{format_size(model.size)} does not fit, even after evicting every "
            f"unpinned model ({sizes})"
        )
