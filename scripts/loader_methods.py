"""What one benchmark measurement loads, and how: the per-method load functions and the bounds.

Every function here loads the whole checkpoint and returns what it loaded, so the caller can
keep it until the clock stops: a model holds its weights, and a harness that drops each
tensor as it arrives lets the next allocation reuse freed memory, skipping the first touch of
fresh memory that dominates a CPU load on these VMs.  Each method keeps its tensors with the
ownership a user of that library asks for to own them: the loader with ``copy=True``, runai
with ``owned=True``, safetensors cloned out of its lazy mapping, fastsafetensors and
tensorizer as they return them.

The bounds load the same bytes with the least work that still ends in fresh memory the
process owns (one anonymous mapping per file, populated chunk by chunk right before the read
that fills it, on several threads); ``io_only`` reuses its buffers and so measures the
storage alone.  tests/integration/test_bench_fairness.py runs every entry of ``METHODS`` on a
tiny checkpoint and checks that each returns every tensor, alive, in memory it owns.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
_MADV_HUGEPAGE = 14
_MADV_POPULATE_WRITE = 23
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@dataclass(frozen=True)
class Checkpoint:
    """The shards of one checkpoint, and the same tensors in tensorizer's format (if made)."""

    paths: list[str]
    tensorizer: str | None = None
    device: str = "cpu"


# name -> tensor; for the bounds, file -> its bytes (a mapping), or its size (io_only).
Loaded = dict[str, Any]


# --------------------------------------------------------------------------- the loader
# The loader's own counters of its last pass (populate and read time, threads, backends),
# for the benchmark's record; not part of the timing.
LOADER_STATS: dict[str, Any] = {}


def _loader(ck: Checkpoint, copy: bool, backend: str | None = None) -> Loaded:
    sys.path.insert(0, str(REPO))
    import loader

    with loader.safe_open(ck.paths, device=ck.device, backend=backend, copy=copy) as f:
        out = dict(f.tensors())
        s = f.last_stats
        if s is not None:
            LOADER_STATS.update(
                populate_s=s.populate_s,
                read_s=s.read_s,
                reader_threads=s.threads,
                requests=s.requests,
                fills=dict(s.fills),
                backends=sorted(set(f.backends.values())),
            )
        return out


def load_loader(ck: Checkpoint) -> Loaded:
    """This loader, automatic backend, ``copy=True``: tensors own their memory."""
    return _loader(ck, copy=True)


def load_loader_views(ck: Checkpoint) -> Loaded:
    """``copy=False`` from tmpfs: views of the hot copy's pages, no memory of their own.

    Not a load into owned memory (nothing is read until a tensor is touched), so it is
    reported apart from the others and only for tmpfs.
    """
    return _loader(ck, copy=False)


# --------------------------------------------------------------------------- peers
def load_safetensors(ck: Checkpoint) -> Loaded:
    """``safetensors.torch.load_file``, each CPU tensor cloned out of the lazy file mapping."""
    from safetensors.torch import load_file

    keep: Loaded = {}
    for p in ck.paths:
        for name, t in load_file(p, device=ck.device).items():
            keep[name] = t if ck.device != "cpu" else t.clone()
    return keep


def load_fastsafetensors(ck: Checkpoint) -> Loaded:
    """fastsafetensors, ``nogds`` on CPU; its tensors keep their buffer alive."""
    from fastsafetensors import fastsafe_open

    with fastsafe_open(ck.paths, nogds=ck.device == "cpu", device=ck.device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict


def load_runai(ck: Checkpoint) -> Loaded:
    """runai-model-streamer with ``owned=True``: tensors that outlive the streamer."""
    from runai_model_streamer import SafetensorsStreamer

    keep: Loaded = {}
    with SafetensorsStreamer() as s:
        s.stream_files(ck.paths, device=ck.device, owned=True)
        for name, t in s.get_tensors():
            # Outside distributed streaming runai hands back host tensors whatever the
            # device; the copy to the GPU is then part of its load, as it would be for a user.
            keep[name] = t if t.device.type == torch.device(ck.device).type else t.to(ck.device)
    return keep


def load_tensorizer(ck: Checkpoint) -> Loaded:
    """tensorizer, from the same tensors serialized to its own format (not timed)."""
    from tensorizer import TensorDeserializer

    if ck.tensorizer is None:
        raise ValueError("tensorizer needs the checkpoint converted to its format")
    with TensorDeserializer(ck.tensorizer, device=ck.device) as d:
        return dict(d.items())


def load_instanttensor(ck: Checkpoint) -> Loaded:
    """InstantTensor (CUDA only)."""
    import instanttensor

    keep: Loaded = {}
    with instanttensor.safe_open(ck.paths, framework="pt", device=ck.device) as f:
        for name, t in f.tensors():
            keep[name] = t
    return keep


# --------------------------------------------------------------------------- bounds
def _fresh(size: int, huge: bool) -> tuple[mmap.mmap, int]:
    """An anonymous private mapping: memory this process owns.

    Huge pages only where a buffer is reused: on a VM that reports free pages to its host
    (these), the first touch of fresh memory costs about 4x more in 2 MiB pages than in
    4 KiB ones, because huge pages come only from blocks the host has taken back.
    """
    mm = mmap.mmap(-1, max(size, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    if huge:
        _libc.madvise(addr, len(mm), _MADV_HUGEPAGE)
    return mm, addr


def _fill(paths: list[str], flags: int, threads: int, chunk: int, reuse: bool) -> Loaded:
    """Read every file whole, ``chunk`` bytes a request, on ``threads`` threads.

    Fresh (``reuse=False``): each file goes into its own new mapping, kept; each chunk is
    populated (``MADV_POPULATE_WRITE``, through ctypes so the GIL is released) right before
    the read lands in it.  Reused: each thread reads every chunk into one buffer of its own,
    populated before the first read, so no fresh memory is touched while reading.
    """
    fds = [os.open(p, os.O_RDONLY | flags) for p in paths]
    try:
        sizes = [os.fstat(fd).st_size for fd in fds]
        # O_DIRECT wants whole pages; the kernel reads the file's last page short.
        pages = [-(-n // mmap.PAGESIZE) * mmap.PAGESIZE for n in sizes]
        dest = [] if reuse else [_fresh(n, huge=False) for n in pages]
        local = threading.local()

        def one(job: tuple[int, int]) -> int:
            fi, off = job
            if reuse:
                if not hasattr(local, "buf"):
                    local.buf = _fresh(chunk, huge=True)
                    _libc.madvise(local.buf[1], chunk, _MADV_POPULATE_WRITE)
                mm, addr, at = local.buf[0], local.buf[1], 0
            else:
                mm, addr = dest[fi]
                at = off
            n = min(chunk, len(mm) - at)
            if not reuse:
                _libc.madvise(addr + at, n, _MADV_POPULATE_WRITE)
            return os.preadv(fds[fi], [memoryview(mm)[at : at + n]], off)

        jobs = [(fi, off) for fi, n in enumerate(sizes) for off in range(0, n, chunk)]
        with ThreadPoolExecutor(threads) as ex:
            got = sum(ex.map(one, jobs))
        if got != sum(sizes):
            raise OSError(f"bound read {got} of {sum(sizes)} bytes")
        if reuse:
            return {p: n for p, n in zip(paths, sizes, strict=True)}
        return {p: d[0] for p, d in zip(paths, dest, strict=True)}
    finally:
        for fd in fds:
            os.close(fd)


def bound_direct_fresh(ck: Checkpoint) -> Loaded:
    """O_DIRECT from the files into fresh, kept memory (8 threads x 16 MiB): the ceiling
    of a cold load into owned CPU memory."""
    return _fill(ck.paths, os.O_DIRECT, 8, 16 * MiB, reuse=False)


def bound_copy_fresh(ck: Checkpoint) -> Loaded:
    """A copy from tmpfs (or the page cache) into fresh, kept memory (one thread per core,
    8 MiB): the ceiling of a load of a RAM-resident file into owned CPU memory."""
    return _fill(ck.paths, 0, os.cpu_count() or 2, 8 * MiB, reuse=False)


def bound_io_only(ck: Checkpoint) -> Loaded:
    """O_DIRECT into reused, prefaulted buffers (8 threads x 16 MiB): the storage alone,
    with no fresh memory touched but its 8 buffers (populated inside the timing, so it reads
    a little low).  Keeps nothing (it returns the byte count of each file), so it is no bound
    for a load."""
    return _fill(ck.paths, os.O_DIRECT, 8, 16 * MiB, reuse=True)


def bound_h2d(ck: Checkpoint) -> Loaded:
    """The host-to-device link alone (CUDA only): a pinned 64 MiB buffer, already in RAM,
    copied over and over into fresh GPU memory as large as the files.  No read: the ceiling
    of a load whose bytes are already in RAM (tmpfs, a warm page cache)."""
    sizes = [os.path.getsize(p) for p in ck.paths]
    chunk = 64 * MiB
    src = torch.empty(chunk, dtype=torch.uint8).pin_memory()
    keep: Loaded = {}
    for p, n in zip(ck.paths, sizes, strict=True):
        dst = torch.empty(n, dtype=torch.uint8, device=ck.device)
        for off in range(0, n, chunk):
            m = min(chunk, n - off)
            dst[off : off + m].copy_(src[:m], non_blocking=True)
        keep[p] = dst
    return keep


Method = Callable[[Checkpoint], Loaded]
METHODS: dict[str, Method] = {
    "loader": load_loader,
    "loader-views": load_loader_views,
    "safetensors": load_safetensors,
    "fastsafetensors": load_fastsafetensors,
    "runai": load_runai,
    "tensorizer": load_tensorizer,
    "instanttensor": load_instanttensor,
    "bound-direct-fresh": bound_direct_fresh,
    "bound-copy-fresh": bound_copy_fresh,
    "bound-io-only": bound_io_only,
    "bound-h2d": bound_h2d,
}
# The modules a method imports, imported before the clock starts.
MODULES = {
    "loader": "loader",
    "loader-views": "loader",
    "safetensors": "safetensors.torch",
    "fastsafetensors": "fastsafetensors",
    "runai": "runai_model_streamer",
    "tensorizer": "tensorizer",
    "instanttensor": "instanttensor",
}


def loaded_bytes(keep: Loaded) -> int:
    """Bytes held by what a method returned."""
    n = 0
    for v in keep.values():
        if isinstance(v, torch.Tensor):
            n += v.numel() * v.element_size()
        else:
            n += v if isinstance(v, int) else len(v)
    return n
