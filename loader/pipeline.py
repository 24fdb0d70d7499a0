"""Execute a plan: reader threads fill buffers, the consumer finishes and yields tensors.

Reader threads only read (and, for CPU copies, scatter small tensors into their fresh
destinations, so page faults on new memory run in parallel with the I/O of other
requests).  The consumer thread walks the requests in schedule order: it hashes, issues
H2D copies on a side stream, broadcasts under a process group, recycles staging buffers,
and yields each tensor once its last request is done.  Submission runs ahead of the
consumer by a bounded window, so memory stays bounded whatever the model size.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch

from loader.backends.base import BackendFile
from loader.devicereads import DeviceReads
from loader.distributed import DistContext
from loader.fill import FreshFiller, OwnFill, fresh_fills
from loader.format import Header
from loader.memory import HUGE_DESTINATIONS, BufferPool, HostBuffer, tensor_bytes
from loader.plan import Kind, Plan, PlannedTensor, Request
from loader.tierfs import ResolvedFile
from loader.verify import FileHashes

log = logging.getLogger(__name__)


@dataclass
class OpenFile:
    """A file of the session: where it is, its header and the backend that reads it."""

    rf: ResolvedFile
    header: Header
    bf: BackendFile
    backend: str


@dataclass
class Stats:
    """Counters of one pass; reader threads update them under the lock.

    ``populate_s`` and ``read_s`` add up the time reader threads spent populating fresh
    destinations and reading (in a copy from memory: faulting and copying), over all
    threads; with ``threads`` they show where a pass's time went.
    """

    bytes_read: int = 0
    requests: int = 0
    populate_s: float = 0.0
    read_s: float = 0.0
    threads: int = 0
    fills: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_fill(self, how: str) -> None:
        """Count a fresh destination filled ``how`` (see ``loader.fill.Fill``)."""
        with self.lock:
            self.fills[how] = self.fills.get(how, 0) + 1

    def add(self, nbytes: int, populate_s: float = 0.0, read_s: float = 0.0) -> None:
        with self.lock:
            self.bytes_read += nbytes
            self.requests += 1
            self.populate_s += populate_s
            self.read_s += read_s


class Pipeline:
    """One pass over a plan.  Iterate it to get ``(name, tensor)`` in schedule order."""

    def __init__(
        self,
        files: list[OpenFile],
        plan: Plan,
        *,
        device: torch.device,
        copy: bool,
        executor: ThreadPoolExecutor,
        pool: BufferPool,
        window: int,
        verify: bool = False,
        dist: DistContext | None = None,
        copy_stream: Any = None,
        stats: Stats | None = None,
        filler: FreshFiller | None = None,
    ) -> None:
        self.files = files
        self.plan = plan
        self.device = device
        self.copy = copy
        self.cpu = device.type == "cpu"
        self.ex = executor
        self.pool = pool
        self.window = max(1, window)
        self.dist = dist
        self.rank = dist.rank if dist else 0
        self.stream = copy_stream
        self.stats = stats or Stats()
        self._next = 0
        self._futs: dict[int, Future[None]] = {}
        self._bufs: dict[int, tuple[HostBuffer, int]] = {}
        self._own: dict[int, HostBuffer] = {}
        self._dest: dict[int, torch.Tensor] = {}
        self._events: dict[int, Any] = {}
        self._holders: dict[int, int] = {}
        self._deferred: list[HostBuffer] = []
        self._dev_stage: torch.Tensor | None = None
        self._device = DeviceReads(
            files,
            plan,
            device=device,
            stream=copy_stream,
            dist=dist,
            stats=self.stats,
            budget=max(pool.capacity, 1 << 28),
        )
        self._done = 0
        # Small CPU copies are scattered by the reader thread right after its read.
        self._scatter_in_worker = self.cpu and copy and dist is None
        # Other ranks' bytes arrive by a receive into the destination: no filler there.
        self._fill = OwnFill(
            filler or FreshFiller(),
            pool,
            enabled=fresh_fills(copy, self.cpu, dist is not None),
        )
        self._hashes = FileHashes(files, plan) if verify else None

    # ---------------------------------------------------------------- buffers
    def _acquire(self, r: Request, force: bool) -> tuple[HostBuffer, int] | None:
        if r.own >= 0:
            buf = self._own.get(r.own)
            if buf is None:
                t = self.plan.tensors[r.own]
                if self.copy:
                    buf = HostBuffer(t.own_len, huge=HUGE_DESTINATIONS)
                    f = self.files[t.file]
                    how = self._fill.prepare(r.own, f.bf, f.backend, buf)
                    self.stats.count_fill(how.value)
                else:
                    got = self.pool.try_acquire(t.own_len, force)
                    if got is None:
                        return None
                    buf = got
                self._own[r.own] = buf
            return buf, r.own_offset
        sbuf = self.pool.try_acquire(r.length, force)
        return (sbuf, 0) if sbuf is not None else None

    def _prepare_dest(self, r: Request) -> None:
        if r.own >= 0:
            return
        for p in r.pieces:
            if p.tensor in self._dest:
                continue
            t = self.plan.tensors[p.tensor]
            if self.cpu and not self.copy and len(t.requests) == 1 and self._viewable(t):
                continue  # will be a view of the staging buffer
            d = torch.empty(t.info.shape, dtype=t.info.torch_dtype, device=self.device)
            if self.stream is not None:
                d.record_stream(self.stream)
            self._dest[p.tensor] = d

    @staticmethod
    def _viewable(t: PlannedTensor) -> bool:
        return t.start % t.info.itemsize == 0

    # ---------------------------------------------------------------- reading
    def _work(self, r: Request, buf: HostBuffer, off: int) -> None:
        f = self.files[r.file]
        if r.own >= 0:
            self.stats.add(r.need, *self._fill.fill(r, f.bf, f.backend, buf, off))
            return
        t0 = time.perf_counter()
        f.bf.read_into(buf.mv[: r.length], buf.addr, r.offset, r.need)
        self.stats.add(r.need, 0.0, time.perf_counter() - t0)
        if self._scatter_in_worker:
            for p in r.pieces:
                d = self._dest[p.tensor]
                ctypes.memmove(d.data_ptr() + p.dst, buf.addr + p.src, p.length)
            self.pool.release(buf)

    def _running(self) -> int:
        return sum(1 for f in self._futs.values() if not f.done())

    def _pump(self) -> None:
        reqs = self.plan.requests
        while self._next < len(reqs):
            r = reqs[self._next]
            if self.dist is not None and r.owner != self.rank:
                self._next += 1
                continue
            running = self._running()
            if running >= self.window:
                return
            got = self._acquire(r, force=running == 0 and not self._futs)
            if got is None:
                return
            self._prepare_dest(r)
            self._bufs[r.index] = got
            self._futs[r.index] = self.ex.submit(self._work, r, got[0], got[1])
            self._next += 1

    def _wait(self, ri: int) -> None:
        while True:
            fut = self._futs.get(ri)
            if fut is None:
                if self._next <= ri:
                    self._pump()
                    if ri not in self._futs:
                        # Nothing in flight can free a buffer: allocate past the cap.
                        r = self.plan.requests[ri]
                        got = self._acquire(r, force=True)
                        assert got is not None
                        self._prepare_dest(r)
                        self._bufs[ri] = got
                        self._futs[ri] = self.ex.submit(self._work, r, got[0], got[1])
                        self._next = max(self._next, ri + 1)
                    continue
                return
            if fut.done():
                del self._futs[ri]
                fut.result()
                self._pump()
                return
            self._pump()
            wait([f for f in self._futs.values() if not f.done()], return_when=FIRST_COMPLETED)

    # ---------------------------------------------------------------- completion
    def _complete(self, ri: int) -> None:
        r = self.plan.requests[ri]
        if self.dist is not None:
            # Keep this rank's share streaming while other ranks' bytes are broadcast.
            self._pump()
        remote = self.dist is not None and r.owner != self.rank
        if remote:
            got = self._acquire(r, force=True)
            assert got is not None
            self._prepare_dest(r)
            self._bufs[ri] = got
        else:
            self._wait(ri)
        buf, off = self._bufs.pop(ri)
        if self.dist is not None:
            self._broadcast(r, buf, off, remote)
            if r.own >= 0 or not self.cpu:
                return
        elif r.own >= 0:
            return
        if self.cpu:
            if self._scatter_in_worker:
                return
            views = 0
            for p in r.pieces:
                d = self._dest.get(p.tensor)
                if d is None:
                    views += 1
                else:
                    ctypes.memmove(d.data_ptr() + p.dst, buf.addr + p.src, p.length)
            if views:
                self._holders[ri] = views
                self._bufs[ri] = (buf, 0)
            else:
                self.pool.release(buf)
            return
        self._h2d(r, buf)

    def _h2d(self, r: Request, buf: HostBuffer) -> None:
        h = self._hashes.hasher(r.file) if self._hashes else None
        if h is not None:
            for p in r.pieces:
                h.update(buf.mv[p.src : p.src + p.length])
        # The destinations were allocated on the consumer's stream, whose queued kernels may
        # still use memory the caching allocator just handed back: copy only after them.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for p in r.pieces:
                flat = self._dest[p.tensor].reshape(-1).view(torch.uint8)
                flat[p.dst : p.dst + p.length].copy_(
                    buf.tensor[p.src : p.src + p.length], non_blocking=True
                )
            ev = torch.cuda.Event()
            ev.record(self.stream)
        for p in r.pieces:
            self._events[p.tensor] = ev
        buf.event = ev
        self.pool.release(buf)

    def _broadcast(self, r: Request, buf: HostBuffer, off: int, remote: bool) -> None:
        assert self.dist is not None
        if self.cpu:
            self.dist.broadcast(buf.tensor[off : off + r.length], r.owner)
            return
        # NCCL needs device memory: the owner stages through a device buffer.
        if self._dev_stage is None or self._dev_stage.numel() < r.length:
            self._dev_stage = torch.empty(
                max(r.length, self.plan.files[r.file].chunk),
                dtype=torch.uint8,
                device=self.device,
            )
        stage = self._dev_stage[: r.length]
        if not remote:
            stage.copy_(buf.tensor[off : off + r.length], non_blocking=True)
        self.dist.broadcast(stage, r.owner)
        if r.own >= 0:
            raise AssertionError("own allocations are CPU only")
        for p in r.pieces:
            flat = self._dest[p.tensor].reshape(-1).view(torch.uint8)
            flat[p.dst : p.dst + p.length].copy_(stage[p.src : p.src + p.length])
        ev = torch.cuda.Event()
        ev.record()
        buf.event = ev
        self.pool.release(buf)

    # ---------------------------------------------------------------- tensors
    def _make(self, t: PlannedTensor) -> tuple[torch.Tensor, bool]:
        """Build tensor ``t`` once its requests are complete; returns (tensor, hashed)."""
        info = t.info
        if t.kind is Kind.EMPTY:
            return torch.empty(info.shape, dtype=info.torch_dtype, device=self.device), True
        if t.kind is Kind.MAPPED:
            f = self.files[t.file]
            mv = f.bf.view(t.start, t.nbytes)
            assert mv is not None
            if self._viewable(t):
                out = torch.frombuffer(mv, dtype=info.torch_dtype).reshape(info.shape)
            else:
                out = torch.empty(info.shape, dtype=info.torch_dtype)
                tensor_bytes(out)[:] = mv
            return out, False
        if t.kind is Kind.DEVICE:
            return self._device.finish(t), False
        for ri in t.requests:
            if ri >= self._done:
                for rj in range(self._done, ri + 1):
                    self._complete(rj)
                self._done = ri + 1
        if t.kind is Kind.OWN:
            buf = self._own.pop(t.index)
            self._fill.release(t.index, buf)
            out = buf.view(t.start - t.own_base, t.nbytes, info.torch_dtype, info.shape)
            if not self.copy:
                self._deferred.append(buf)
            return out, False
        d = self._dest.pop(t.index, None)
        if d is not None:
            ev = self._events.pop(t.index, None)
            if ev is not None:
                torch.cuda.current_stream(self.device).wait_event(ev)
            return d, not self.cpu and self.dist is None
        ri = t.requests[0]
        buf, _ = self._bufs[ri]
        p = next(p for p in self.plan.requests[ri].pieces if p.tensor == t.index)
        out = buf.view(p.src, t.nbytes, info.torch_dtype, info.shape)
        self._holders[ri] -= 1
        if self._holders[ri] == 0:
            del self._holders[ri]
            self._deferred.append(self._bufs.pop(ri)[0])
        return out, False

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        self._done = 0
        if self.dist is not None and self._hashes:
            log.debug("verify under a process group hashes after the broadcast")
        try:
            self._pump()
            for t in self.plan.tensors:
                tensor, hashed = self._make(t)
                if self._hashes is not None:
                    self._hashes.tensor_done(t, tensor, hashed)
                pending = self._deferred
                self._deferred = []
                yield t.info.name, tensor
                # The consumer asked for the next tensor: buffers behind views are free.
                for b in pending:
                    self.pool.release(b)
            for b in self._deferred:
                self.pool.release(b)
            self._deferred = []
        finally:
            self._drain()

    def _drain(self) -> None:
        cancelled = {ri for ri, f in self._futs.items() if f.cancel()}
        for ri, f in self._futs.items():
            if ri not in cancelled:
                try:
                    f.result()
                except Exception as e:  # already reported, or the load was abandoned
                    log.debug("abandoned read failed: %s", e)
        self._futs.clear()
        for ri, (buf, _) in list(self._bufs.items()):
            if self.plan.requests[ri].own >= 0:
                continue
            # A reader that ran has already handed its staging buffer back itself.
            if self._scatter_in_worker and ri not in cancelled:
                continue
            self.pool.release(buf)
        self._bufs.clear()
        for own, buf in self._own.items():
            self._fill.release(own, buf)
        self._device.drain()
