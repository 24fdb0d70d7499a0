"""Tuning derived from where the files live: backend order, reader threads, chunk sizes.

The defaults must be right without tuning; every choice can be overridden by an argument
or a ``LOADER_*`` environment setting, for measurements.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from loader import tierfs
from loader.arguments import env_int, parse_size
from loader.backends.gds import native_gds
from loader.errors import ConfigError
from loader.pagecache import page_cache_fraction
from loader.pipeline import OpenFile
from loader.plan import ALIGN

MiB = 1 << 20


@dataclass
class Tuning:
    """Derived (or overridden) sizes for a session."""

    threads: int
    chunks: list[int]
    staging: int
    buffer: int | None


def auto_candidates(rf: tierfs.ResolvedFile, device: torch.device) -> list[str]:
    """Backend order chosen from the (backing) file system, the device and the page cache."""
    cands: list[str] = []
    # Without the GDS driver kvikio does POSIX reads into bounce buffers, on one thread
    # unless KVIKIO_NTHREADS says otherwise: the staging ring's own readers do the same
    # bounce, tuned to the storage.  (Seen on an H200 without nvidia-fs, docs/benchmarks.md.)
    if device.type == "cuda" and rf.fs not in tierfs.MEMORY_FS and native_gds():
        cands.append("gds")
    if rf.fs in tierfs.MEMORY_FS:
        return [*cands, "mmap", "buffered"]
    if rf.fs == "fuse":
        # Reading through a FUSE mount (tierfs fallback): the page cache path is the safe one.
        return [*cands, "buffered"]
    if page_cache_fraction(rf.fd, rf.size) >= 0.9:
        # A repeat load: the bytes are already in RAM, copying them beats re-reading the disk.
        return [*cands, "buffered", "direct"]
    return [*cands, "direct", "buffered"]


def derive_tuning(
    files: list[OpenFile],
    threads: int | None,
    chunk_size: int | str | None,
    staging_size: int | str | None,
    buffer_size: int | str | None,
    fresh_fills: bool = False,
) -> Tuning:
    """Reader threads, chunk per file and buffer sizes for ``files``; arguments win over
    ``$LOADER_*`` settings, which win over what the backends and storage suggest.

    Args:
        fresh_fills: the pass fills owned CPU memory through ``loader.fill.OwnFill``, whose
            readers copy after they read.

    Raises:
        ConfigError: an argument or setting is not a usable size or count.
    """
    env = os.environ.get
    ncpu = os.cpu_count() or 2
    chunk_o = parse_size(chunk_size, "chunk_size") or parse_size(
        env("LOADER_CHUNK_SIZE"), "LOADER_CHUNK_SIZE"
    )
    chunks, thread_wants = [], []
    for f in files:
        if f.backend == "mmap":
            c, th = 8 * MiB, min(16, max(4, 2 * ncpu))
        elif f.backend == "buffered":
            hybrid = getattr(f.bf, "direct", None) is not None
            # ncpu threads copy from the page cache; with O_DIRECT, more read around it.
            c, th = 8 * MiB, (min(ncpu, 8) + 4) if hybrid else min(16, max(4, 2 * ncpu))
        else:
            prof = tierfs.storage_profile(f.rf.read_path, f.rf.fs)
            if prof.rotational:
                c, th = 16 * MiB, 2
            elif prof.fs in tierfs.NETWORK_FS:
                c, th = 16 * MiB, 16
            elif fresh_fills:
                # Each reader copies its chunk into fresh memory after reading it (the bounce
                # fill), so 4 more keep about 8 reads in flight: 1.10-1.12x over 8 threads,
                # cold, 4.45 GB, two rounds of 5 (16 threads: 1.09x).
                c, th = 16 * MiB, 12
            else:
                c, th = 16 * MiB, 8
        if chunk_o:
            c = max(16 * ALIGN, chunk_o // ALIGN * ALIGN)
        chunks.append(c)
        thread_wants.append(th)
    nthreads = threads if threads is not None else env_int("LOADER_THREADS")
    if nthreads is None:
        nthreads = max(thread_wants, default=4)
    if nthreads < 1:
        raise ConfigError(f"must be >= 1, not {nthreads}", key="threads")
    maxc = max(chunks, default=16 * MiB)
    staging = (
        parse_size(staging_size, "staging_size")
        or parse_size(env("LOADER_STAGING_SIZE"), "LOADER_STAGING_SIZE")
        or (2 * nthreads * maxc)
    )
    buf = parse_size(buffer_size, "buffer_size") or parse_size(
        env("LOADER_BUFFER_SIZE"), "LOADER_BUFFER_SIZE"
    )
    return Tuning(nthreads, chunks, staging, buf)
