"""Tensors a backend reads straight into device memory (GDS): no host request, no staging.

Reads are started ahead of the consumer within a byte budget, in plan order, and each
tensor is handed over once its read has completed (and, under a process group, once the
rank that read it has broadcast it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from loader.distributed import DistContext
from loader.errors import LoaderIOError
from loader.plan import Kind, Plan, PlannedTensor

if TYPE_CHECKING:
    from loader.pipeline import OpenFile, Stats

log = logging.getLogger(__name__)


class DeviceReads:
    """The device-direct tensors of one pass."""

    def __init__(
        self,
        files: list[OpenFile],
        plan: Plan,
        *,
        device: torch.device,
        stream: Any,
        dist: DistContext | None,
        stats: Stats,
        budget: int,
    ) -> None:
        self.files = files
        self.plan = plan
        self.device = device
        self.stream = stream
        self.dist = dist
        self.rank = dist.rank if dist else 0
        self.stats = stats
        self.budget = budget
        self._next = 0
        self._dest: dict[int, torch.Tensor] = {}
        self._futs: dict[int, Any] = {}

    def _pump(self, upto: int) -> None:
        tensors = self.plan.tensors
        inflight = sum(tensors[i].nbytes for i in self._futs)
        while self._next < len(tensors) and (self._next <= upto or inflight < self.budget):
            t = tensors[self._next]
            self._next += 1
            if t.kind is not Kind.DEVICE:
                continue
            # kvikio writes from its own threads, outside any stream order.  Memory from the
            # side stream's pool is never memory the consumer's queued kernels still use;
            # record_stream makes a later free wait for the consumer's use of the tensor.
            with torch.cuda.stream(self.stream):
                d = torch.empty(t.info.shape, dtype=t.info.torch_dtype, device=self.device)
            d.record_stream(torch.cuda.current_stream(self.device))
            self._dest[t.index] = d
            if self.dist is not None and t.owner != self.rank:
                continue
            self._futs[t.index] = self.files[t.file].bf.read_device(d, t.start)
            inflight += t.nbytes

    def finish(self, t: PlannedTensor) -> torch.Tensor:
        """Tensor ``t`` once read (and broadcast); starts the reads that follow it.

        Raises:
            LoaderIOError: the read delivered fewer bytes than the tensor holds.
        """
        self._pump(t.index)
        fut = self._futs.pop(t.index, None)
        if fut is not None:
            n = fut.get()
            if n != t.nbytes:
                raise LoaderIOError(
                    f"short device read of {t.info.name!r}: {n} of {t.nbytes}",
                    path=self.files[t.file].rf.requested,
                )
            self.stats.add(t.nbytes)
        d = self._dest.pop(t.index)
        if self.dist is not None:
            self.dist.broadcast(d.reshape(-1).view(torch.uint8), t.owner)
        return d

    def drain(self) -> None:
        """Wait for reads the consumer abandoned, so no write lands in freed memory."""
        for fut in self._futs.values():
            try:
                fut.get()
            except Exception as e:
                log.debug("abandoned device read failed: %s", e)
        self._futs.clear()
