"""Pins: models kept hot whatever the LRU says, optionally on a named tier; they survive
restarts (the catalog holds them) and are promoted again when the mover starts."""

from __future__ import annotations

from tierfs.storage.mover.context import MoverContext


class Pins:
    """The pinned models of a mount, as the catalog holds them.

    Args:
        ctx: the mover's shared parts.
    """

    def __init__(self, ctx: MoverContext) -> None:
        self.ctx = ctx

    async def all(self) -> dict[str, str | None]:
        """Pinned model -> the tier it is pinned to (None: wherever the strategy says)."""
        return await self.ctx.db(self.ctx.catalog.pins)

    async def add(self, model: str, tier: str | None) -> None:
        await self.ctx.db(self.ctx.catalog.pin, model, tier)

    async def remove(self, model: str) -> bool:
        return bool(await self.ctx.db(self.ctx.catalog.unpin, model))

    async def kept_files(self, pins: dict[str, str | None], besides: str | None) -> set[str]:
        """Files of the pinned models other than `besides`: demotions leave them hot
        (an Ollama blob shared with a pinned model stays)."""
        keep: set[str] = set()
        for model in (await self.ctx.inventory()).models:
            if model.name != besides and model.name in pins:
                keep.update(model.files)
        return keep
