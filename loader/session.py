"""``safe_open`` sessions: resolve paths, open files with a backend each, run pipelines."""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from loader import tierfs
from loader.backends import get_backend, parse_candidates
from loader.backends.base import OpenContext
from loader.distributed import DistContext, make_context
from loader.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    LoaderIOError,
)
from loader.format import TensorInfo, read_header
from loader.memory import BufferPool, HostBuffer
from loader.pipeline import OpenFile, Pipeline, Stats
from loader.plan import ALIGN, FileSpec, Plan, assign_owners, build_plan
from tierfs import units

log = logging.getLogger(__name__)

PathsLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
MiB = 1 << 20


def parse_size(value: str | int | None, what: str) -> int | None:
    """Parse ``"16M"``, ``"1GiB"``, ``"65536"`` or an int, by tierfs's rule (binary units).

    Raises:
        ConfigError: the value is not a size.
    """
    if value is None or value == "":
        return None
    try:
        return units.parse_size(value)
    except ValueError as exc:
        raise ConfigError(None, f"{what}: {value!r} is not a size ({exc})") from None


def expand_paths(paths: PathsLike) -> list[str]:
    """Turn a file, list, directory or ``*.index.json`` into the ordered list of files.

    Raises:
        CheckpointError: nothing to load, or an index that cannot be read.
    """
    if isinstance(paths, (str, os.PathLike)):
        items = [os.fspath(paths)]
    else:
        items = [os.fspath(p) for p in paths]
    out: list[str] = []
    for p in items:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".safetensors"))
            if not found:
                raise CheckpointError(p, "directory holds no .safetensors files")
            out += found
        elif p.endswith(".json"):
            out += _index_files(p)
        else:
            out.append(p)
    if not out:
        raise CheckpointError(None, "no files given")
    seen: set[str] = set()
    unique = []
    for p in out:
        ap = os.path.abspath(p)
        if ap not in seen:
            seen.add(ap)
            unique.append(ap)
    return unique


def _index_files(index: str) -> list[str]:
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(index, f"cannot read the index: {e}") from e
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(index, "index has no weight_map of tensor -> file names")
    base = os.path.dirname(os.path.abspath(index))
    names = sorted(set(wm.values()))
    for n in names:
        if os.path.isabs(n) or ".." in n.split("/"):
            raise CheckpointError(index, f"index names a file outside its directory: {n!r}")
    return [os.path.join(base, n) for n in names]


def parse_device(device: str | int | torch.device) -> torch.device:
    """``"cpu"``, ``0``, ``"cuda:0"`` or a torch.device.

    Raises:
        ConfigError: not a device.
    """
    try:
        if isinstance(device, int):
            return torch.device("cuda", device)
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(None, f"invalid device {device!r}: {e}") from None
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(None, f"device {d} is not supported (cpu or cuda)")
    return d


_libc = ctypes.CDLL(None, use_errno=True)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


_SYS_CACHESTAT = 451  # same number in the generic and x86_64 tables (Linux 6.5+)


def _cachestat_fraction(fd: int, size: int) -> float | None:
    rng, out = _CachestatRange(0, 0), _Cachestat()
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(out), 0) != 0:
        return None
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    return min(1.0, out.nr_cache / pages)


def page_cache_fraction(fd: int, size: int) -> float:
    """Fraction of a file's pages in the page cache (``cachestat``, else ``mincore``);
    0.0 when unknown."""
    if size <= 0:
        return 0.0
    quick = _cachestat_fraction(fd, size)
    if quick is not None:
        return quick
    try:
        # A private writable mapping lends its address through ctypes; it is never touched.
        probe = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return 0.0
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        cbuf = ctypes.c_char.from_buffer(probe)
        rc = _libc.mincore(ctypes.c_void_p(ctypes.addressof(cbuf)), ctypes.c_size_t(size), vec)
        del cbuf
        if rc != 0:
            return 0.0
        # Only bit 0 is defined (resident); the others are reserved and zero.
        return 1.0 - bytes(vec).count(0) / pages
    finally:
        probe.close()


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
    if device.type == "cuda" and rf.fs not in tierfs.MEMORY_FS:
        try:
            import kvikio  # noqa: F401

            cands.append("gds")
        except ImportError:
            pass
    if rf.fs in tierfs.MEMORY_FS:
        return [*cands, "mmap", "buffered"]
    if rf.fs == "fuse":
        # Reading through a FUSE mount (tierfs fallback): the page cache path is the safe one.
        return [*cands, "buffered"]
    if page_cache_fraction(rf.fd, rf.size) >= 0.9:
        # A repeat load: the bytes are already in RAM, copying them beats re-reading the disk.
        return [*cands, "buffered", "direct"]
    return [*cands, "direct", "buffered"]


class SafeOpen:
    """A set of safetensors files opened for loading.  Use as a context manager.

    Tensors come out in file order across all files (``tensors()``), or one at a time
    (``get_tensor``).  See ``loader.safe_open`` for the arguments.
    """

    def __init__(
        self,
        paths: PathsLike,
        framework: str = "pt",
        device: str | int | torch.device = "cpu",
        process_group: Any = None,
        backend: str | Sequence[str] | None = None,
        copy: bool = True,
        *,
        verify: bool = False,
        threads: int | None = None,
        chunk_size: int | str | None = None,
        staging_size: int | str | None = None,
        buffer_size: int | str | None = None,
    ) -> None:
        if framework not in ("pt", "torch"):
            raise ConfigError(None, f"framework {framework!r} is not supported; use 'pt'")
        self.device = parse_device(device)
        self.copy = copy
        self.verify = verify
        self.dist: DistContext | None = make_context(process_group)
        spec = backend if backend is not None else os.environ.get("LOADER_BACKEND") or None
        self._explicit = parse_candidates(spec) if spec else None
        self.paths = expand_paths(paths)
        self.files: list[OpenFile] = []
        self._index: dict[str, tuple[int, TensorInfo]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._pool: BufferPool | None = None
        self._stream: Any = None
        self._lock = threading.Lock()
        self.last_stats: Stats | None = None
        try:
            for p in self.paths:
                self._open_one(p)
            self.tuning = self._tune(threads, chunk_size, staging_size, buffer_size)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _open_one(self, path: str) -> None:
        try:
            rf = tierfs.resolve(path)
        except OSError as e:
            raise LoaderIOError(path, f"cannot open: {e.strerror}", e.errno) from e
        try:
            header = read_header(rf.requested, fd=rf.fd)
        except OSError as e:
            rf.close()
            raise LoaderIOError(path, f"cannot read the header: {e.strerror}", e.errno) from e
        except BaseException:
            rf.close()
            raise
        cands = self._explicit or auto_candidates(rf, self.device)
        ctx = OpenContext(self.device, self.copy)
        reasons = []
        for name in cands:
            try:
                bf = get_backend(name).open(rf, ctx)
            except BackendUnavailableError as e:
                (log.warning if self._explicit else log.info)("%s; trying the next", e)
                reasons.append(e.message)
                continue
            fi = len(self.files)
            self.files.append(OpenFile(rf, header, bf, name))
            for t in header.tensors:
                if t.name in self._index:
                    other = self.files[self._index[t.name][0]].rf.requested
                    raise CheckpointError(path, f"tensor {t.name!r} is also in {other}")
                self._index[t.name] = (fi, t)
            log.debug("%s: backend %s (fs %s, via %s)", path, name, rf.fs, rf.read_path)
            return
        rf.close()
        raise BackendUnavailableError(path, "no backend can read this file: " + "; ".join(reasons))

    def _tune(
        self,
        threads: int | None,
        chunk_size: int | str | None,
        staging_size: int | str | None,
        buffer_size: int | str | None,
    ) -> Tuning:
        env = os.environ.get
        ncpu = os.cpu_count() or 2
        chunk_o = parse_size(chunk_size, "chunk_size") or parse_size(
            env("LOADER_CHUNK_SIZE"), "LOADER_CHUNK_SIZE"
        )
        chunks, thread_wants = [], []
        for f in self.files:
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
                else:
                    c, th = 16 * MiB, 8
            if chunk_o:
                c = max(16 * ALIGN, chunk_o // ALIGN * ALIGN)
            chunks.append(c)
            thread_wants.append(th)
        t_env = env("LOADER_THREADS")
        nthreads = threads or (int(t_env) if t_env else max(thread_wants, default=4))
        if nthreads < 1:
            raise ConfigError(None, f"threads must be >= 1, not {nthreads}")
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

    # ------------------------------------------------------------------ context
    def __enter__(self) -> SafeOpen:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the reader threads and close every file."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for f in self.files:
            f.bf.close()
            f.rf.close()
        self.files = []
        self._pool = None

    # ------------------------------------------------------------------ API
    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return [t.name for f in self.files for t in f.header.tensors]

    def metadata(self) -> dict[str, str] | None:
        """``__metadata__`` of the file (merged over files, first file wins on conflicts)."""
        out: dict[str, str] = {}
        seen = False
        for f in reversed(self.files):
            if f.header.metadata is not None:
                seen = True
                out.update(f.header.metadata)
        return out if seen else None

    @property
    def backends(self) -> dict[str, str]:
        """Backend chosen for each file."""
        return {f.rf.requested: f.backend for f in self.files}

    def _plan(self, select: str | None) -> Plan:
        specs = []
        total = 0
        for fi, f in enumerate(self.files):
            sel = None
            if select is not None:
                # Keep every file in the plan so request file indices match self.files.
                sel = frozenset([select]) if self._index[select][0] == fi else frozenset()
            bk = get_backend(f.backend)
            if bk.device_direct:
                mode = "device"
            elif bk.zero_copy and not self.copy and self.device.type == "cpu" and self.dist is None:
                mode = "mapped"
            else:
                mode = "read"
            chunk = self.tuning.chunks[fi]
            own = min(MiB, chunk // 2) if self.device.type == "cpu" else None
            specs.append(FileSpec(f.header, chunk, own, mode, sel))
            total += f.header.data_size
        plan = build_plan(specs)
        if self.dist is not None:
            assign_owners(plan, self.dist.world)
        return plan

    def _ensure_runtime(self, plan: Plan) -> tuple[ThreadPoolExecutor, BufferPool]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.tuning.threads, "loader-io")
            if self._pool is None:
                pinned = self.device.type == "cuda"
                if pinned:
                    cap = self.tuning.staging
                elif not self.copy:
                    maxc = max(self.tuning.chunks, default=16 * MiB)
                    cap = self.tuning.buffer or max(
                        256 * MiB, 2 * plan.largest_tensor, 2 * self.tuning.threads * maxc
                    )
                else:
                    cap = self.tuning.staging
                self._pool = BufferPool(cap, lambda n: HostBuffer(n, pinned=pinned))
            if self.device.type == "cuda" and self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
        return self._executor, self._pool

    def _pipeline(self, plan: Plan, verify: bool) -> Pipeline:
        ex, pool = self._ensure_runtime(plan)
        if (
            not self.copy
            and self.device.type == "cpu"
            and any(t.kind.value in ("own", "staged") for t in plan.tensors)
            and pool.capacity < plan.total_bytes
        ):
            warnings.warn(
                f"copy=False: the {pool.capacity >> 20} MiB buffer is smaller than the "
                f"{plan.total_bytes >> 20} MiB loaded, so it is reused: consume each tensor "
                "before asking for the next one (or pass copy=True)",
                UserWarning,
                stacklevel=3,
            )
        stats = Stats(threads=self.tuning.threads)
        self.last_stats = stats
        return Pipeline(
            self.files,
            plan,
            device=self.device,
            copy=self.copy,
            executor=ex,
            pool=pool,
            window=2 * self.tuning.threads,
            verify=verify,
            dist=self.dist,
            copy_stream=self._stream,
            stats=stats,
        )

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every tensor, in file order.

        Raises:
            LoaderIOError: a read failed.
            IntegrityError: ``verify=True`` and a file's hash does not match tierfs's.
        """
        if not self.files:
            raise ConfigError(None, "the session is closed")
        yield from self._pipeline(self._plan(None), self.verify)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get_tensor(self, name: str) -> torch.Tensor:
        """Load one tensor (an owned copy, or a mapping view with ``copy=False`` on mmap).

        Raises:
            KeyError: no tensor has that name.
        """
        if name not in self._index:
            raise KeyError(name)
        plan = self._plan(name)
        pipe = self._pipeline(plan, False)
        if not self.copy and plan.tensors[0].kind.value != "mapped":
            pipe.copy = True
            pipe._scatter_in_worker = self.device.type == "cpu" and self.dist is None
        out = [t for _, t in pipe]
        return out[0]


def safe_open(
    paths: PathsLike,
    framework: str = "pt",
    device: str | int | torch.device = "cpu",
    process_group: Any = None,
    backend: str | Sequence[str] | None = None,
    copy: bool = True,
    *,
    verify: bool = False,
    threads: int | None = None,
    chunk_size: int | str | None = None,
    staging_size: int | str | None = None,
    buffer_size: int | str | None = None,
) -> SafeOpen:
    """Open safetensors files for fast loading.

    Args:
        paths: a file, a list of files, a directory or a ``*.index.json``.
        framework: ``"pt"`` (torch) only.
        device: ``"cpu"``, a CUDA ordinal or ``"cuda:N"``.
        process_group: a torch.distributed group: ranks split the reading, every rank gets
            every tensor.
        backend: comma-separated candidates (``direct``, ``buffered``, ``mmap``, ``gds``)
            tried in order; default: chosen per file, or ``$LOADER_BACKEND``.
        copy: ``True`` yields tensors owning their memory; ``False`` yields views into the
            loader's buffer (valid until the next tensor is requested) or into the file
            mapping (mmap backend, valid for the tensor's lifetime).
        verify: check each file's xxh3-128 against ``user.tierfs.xxh3`` while streaming.
        threads, chunk_size, staging_size, buffer_size: override the derived tuning (also
            ``$LOADER_THREADS``, ``$LOADER_CHUNK_SIZE``, ``$LOADER_STAGING_SIZE``,
            ``$LOADER_BUFFER_SIZE``).

    Raises:
        SafetensorsFormatError: a file is not valid safetensors.
        UnknownBackendError: a backend name is not registered.
        BackendUnavailableError: no candidate backend can read a file.
        CheckpointError: no files, a bad index, or a tensor name in two files.
        LoaderIOError: a file cannot be opened or read.
    """
    return SafeOpen(
        paths,
        framework,
        device,
        process_group,
        backend,
        copy,
        verify=verify,
        threads=threads,
        chunk_size=chunk_size,
        staging_size=staging_size,
        buffer_size=buffer_size,
    )


def load_file(
    path: PathsLike, device: str | int | torch.device = "cpu", **kwargs: Any
) -> dict[str, torch.Tensor]:
    """Load every tensor into a dict, like ``safetensors.torch.load_file``.

    Args:
        path: as ``paths`` of ``safe_open``.
        device: target device.
        kwargs: further ``safe_open`` arguments (``backend``, ``verify``, ...).

    Raises:
        LoaderError: see ``safe_open``.
    """
    kwargs.setdefault("copy", True)
    with safe_open(path, device=device, **kwargs) as f:
        return dict(f.tensors())
