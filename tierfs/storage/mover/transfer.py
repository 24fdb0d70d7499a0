"""One verified copy onto a tier, claimed beforehand: copy, verify, rename, settle, serve.

Used by promotions (from the cold file) and by fill-first evictions that move a hot copy
down to a slower tier (from the faster copy, checked against the recorded hash).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import trio

from tierfs.faults import pause_point
from tierfs.storage.backing import Backing
from tierfs.storage.copier import CopyCancelled, CopyError, copy_file
from tierfs.storage.mover.context import ModelFile, MoverContext
from tierfs.storage.tiers import Tier, unlink_quietly

log = logging.getLogger(__name__)


async def copy_claimed(
    ctx: MoverContext,
    f: ModelFile,
    tier: Tier,
    *,
    source: Path,
    limiter: trio.CapacityLimiter,
    expected_xxh3: str | None = None,
    progress: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
) -> str | None:
    """Copy a file whose replica on `tier` the caller claimed (``copying``) and serve it.

    Errors are returned, not raised: trio would wrap them in an ExceptionGroup that no
    handler above matches (killing the daemon), and would cancel sibling copies between
    their rename and their catalog update, leaking their claims.

    Returns:
        None when the copy serves (or was cancelled, or lost its claim); else what failed.
    """
    final = tier.hot_path(*f.key)
    temp = tier.temp_path(f.record.id)
    try:
        async with limiter:
            if cancelled is not None and cancelled.is_set():
                raise CopyCancelled("cancelled before it started", path=str(final))
            result = await trio.to_thread.run_sync(
                lambda: copy_file(
                    source,
                    temp,
                    final,
                    expected_size=f.record.size,
                    expected_xxh3=expected_xxh3,
                    progress=progress,
                    cancelled=cancelled,
                    pause_hook=pause_point,
                    durable=tier.durable,
                )
            )
    except (CopyError, OSError, trio.Cancelled) as exc:
        # No copy in place: drop the claim, even when the mount is stopping (a copy
        # still waiting for its turn is cancelled there) so that nothing is left to repair.
        with trio.CancelScope(shield=True):
            await ctx.db(ctx.catalog.drop_replica, f.record.id, tier.name)
        if isinstance(exc, trio.Cancelled):
            raise
        if isinstance(exc, CopyCancelled):
            return None
        if isinstance(exc, OSError):
            exc = CopyError(f"copy of {source} failed: {exc}", path=str(final))
        return str(exc)
    # The copy is in place: settle it in the catalog even if the mount is stopping, so
    # that a clean stop leaves no claim half-done for the next start to repair.
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(pause_point, "copy_renamed")
        accepted = await ctx.db(
            ctx.catalog.finish_copy, f.record.id, tier.name, result.xxh3, f.record.identity
        )
        if not accepted:
            # Demoted or changed underneath while we copied: the copy must not serve.
            await trio.to_thread.run_sync(unlink_quietly, final)
            return None
    record = await ctx.db(ctx.catalog.file, f.record.id)
    if record is not None:
        ctx.placement.serve(record, Backing(tier.name, final))
    return None
