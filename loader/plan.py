"""One read schedule for all files: tensors in file order, reads coalesced and aligned.

Each tensor becomes one of:

- ``OWN``: a large tensor read in place into its own page-aligned allocation (CPU); the
  allocation covers the tensor's 4 KiB-aligned range, split into requests of at most
  ``chunk`` bytes.  Nothing is copied after the read.
- ``STAGED``: bytes arrive in a staging buffer shared with neighbouring tensors (small
  tensors coalesced into one request; a large one split over several) and are copied to
  the destination, or viewed in place when the tensor sits in a single request.
- ``MAPPED``: a view into a file mapping (mmap backend, ``copy=False``); no request.
- ``DEVICE``: read straight into device memory by the backend (GDS); no host request.
- ``EMPTY``: zero bytes.

Requests are 4 KiB aligned in offset and length so O_DIRECT can serve them; the tail page of
a file is read short by the kernel, which is fine because no tensor byte lies beyond EOF.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from loader.format import Header, TensorInfo

ALIGN = 4096


def align_down(x: int, a: int = ALIGN) -> int:
    return x - x % a


def align_up(x: int, a: int = ALIGN) -> int:
    return -(-x // a) * a


class Kind(enum.Enum):
    OWN = "own"
    STAGED = "staged"
    MAPPED = "mapped"
    DEVICE = "device"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Piece:
    """``length`` bytes at ``src`` in a request's buffer are bytes ``dst..`` of a tensor."""

    tensor: int
    src: int
    dst: int
    length: int


@dataclass(slots=True)
class Request:
    """One aligned read of ``length`` bytes at file ``offset``.

    ``need`` is how many of those bytes must really be read (the rest is alignment slack
    past the last tensor byte).  ``own`` is the tensor whose own allocation receives the
    bytes at ``own_offset`` (``-1``: a staging buffer).  ``owner`` is the rank that reads it.
    """

    index: int
    file: int
    offset: int
    length: int
    need: int
    pieces: tuple[Piece, ...]
    own: int = -1
    own_offset: int = 0
    owner: int = 0


@dataclass(slots=True)
class PlannedTensor:
    index: int
    file: int
    info: TensorInfo
    start: int  # absolute offset in the file
    kind: Kind
    requests: list[int] = field(default_factory=list)
    own_base: int = 0  # aligned file offset where an OWN allocation begins
    own_len: int = 0
    owner: int = 0  # for DEVICE tensors under a process group

    @property
    def nbytes(self) -> int:
        return self.info.nbytes


@dataclass(frozen=True)
class FileSpec:
    """How one file is to be planned.

    ``own_threshold``: tensors of at least this many bytes are read in place (``None``: never).
    ``mode``: ``"read"`` (requests), ``"mapped"`` (views into a mapping) or ``"device"``.
    """

    header: Header
    chunk: int
    own_threshold: int | None
    mode: str = "read"
    select: frozenset[str] | None = None


@dataclass
class Plan:
    tensors: list[PlannedTensor]
    requests: list[Request]
    files: list[FileSpec]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def read_bytes(self) -> int:
        return sum(r.length for r in self.requests)

    @property
    def largest_tensor(self) -> int:
        return max((t.nbytes for t in self.tensors), default=0)


class _Builder:
    def __init__(self) -> None:
        self.tensors: list[PlannedTensor] = []
        self.requests: list[Request] = []
        self._file = -1
        self._base = 0
        self._chunk = 0
        self._pieces: list[Piece] = []
        self._end = 0  # absolute end of the last byte added to the open group

    def flush(self) -> None:
        if not self._pieces:
            return
        length = align_up(self._end) - self._base
        idx = len(self.requests)
        self.requests.append(
            Request(
                idx, self._file, self._base, length, self._end - self._base, tuple(self._pieces)
            )
        )
        for p in self._pieces:
            reqs = self.tensors[p.tensor].requests
            if not reqs or reqs[-1] != idx:
                reqs.append(idx)
        self._pieces = []

    def add_staged(self, t: PlannedTensor, chunk: int) -> None:
        """Append a tensor to the open group, splitting it when it does not fit."""
        start, end = t.start, t.start + t.nbytes
        # Keep a tensor that fits in one request whole, so copy=False can view it in place.
        if self._pieces and align_up(end) - self._base > chunk and t.nbytes <= chunk - ALIGN:
            self.flush()
        pos = start
        while pos < end:
            if not self._pieces:
                self._base = align_down(pos)
            room = self._base + chunk - pos
            if room <= 0:
                self.flush()
                continue
            take = min(end - pos, room)
            self._pieces.append(Piece(t.index, pos - self._base, pos - start, take))
            self._end = pos + take
            pos += take
            if self._base + chunk - self._end <= 0:
                self.flush()

    def add_own(self, t: PlannedTensor, chunk: int) -> None:
        self.flush()
        start, end = t.start, t.start + t.nbytes
        base, top = align_down(start), align_up(end)
        t.own_base, t.own_len = base, top - base
        off = base
        while off < top:
            length = min(chunk, top - off)
            lo, hi = max(start, off), min(end, off + length)
            idx = len(self.requests)
            self.requests.append(
                Request(
                    idx,
                    t.file,
                    off,
                    length,
                    hi - off,
                    (Piece(t.index, lo - off, lo - start, hi - lo),),
                    own=t.index,
                    own_offset=off - base,
                )
            )
            t.requests.append(idx)
            off += length


def build_plan(files: Sequence[FileSpec]) -> Plan:
    """Build the schedule for ``files`` in the given order.

    Args:
        files: one spec per file; ``chunk`` must be a multiple of 4 KiB of at least 64 KiB.

    Raises:
        ValueError: a chunk size is not usable.
    """
    b = _Builder()
    for fi, spec in enumerate(files):
        if spec.chunk % ALIGN or spec.chunk < 16 * ALIGN:
            raise ValueError(f"chunk size {spec.chunk} must be a multiple of {ALIGN} and >= 64K")
        b.flush()
        b._file = fi
        h = spec.header
        for info in h.tensors:
            if spec.select is not None and info.name not in spec.select:
                continue
            t = PlannedTensor(len(b.tensors), fi, info, h.data_offset + info.start, Kind.STAGED)
            b.tensors.append(t)
            if info.nbytes == 0:
                t.kind = Kind.EMPTY
            elif spec.mode == "mapped":
                t.kind = Kind.MAPPED
            elif spec.mode == "device":
                t.kind = Kind.DEVICE
            elif (
                spec.own_threshold is not None
                and info.nbytes >= spec.own_threshold
                and t.start % info.itemsize == 0
            ):
                t.kind = Kind.OWN
                b.add_own(t, spec.chunk)
            else:
                b.add_staged(t, spec.chunk)
        b.flush()
    return Plan(b.tensors, b.requests, list(files))


def assign_owners(plan: Plan, world: int) -> None:
    """Split the reading between ``world`` ranks by bytes, in contiguous balanced ranges.

    Every byte is read by exactly one rank; device-direct tensors are assigned whole.
    """
    units: list[tuple[int, Request | PlannedTensor]] = [(r.length, r) for r in plan.requests]
    units += [(t.nbytes, t) for t in plan.tensors if t.kind is Kind.DEVICE]
    total = sum(n for n, _ in units) or 1
    acc = 0
    for n, u in units:
        # The midpoint decides, which keeps ranks within one request of an equal share.
        u.owner = min(world - 1, (acc + n // 2) * world // total)
        acc += n
