"""``safe_open`` sessions: resolve paths, open files with a backend each, run pipelines."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import torch

from loader import tierfs
from loader.arguments import PathsLike, expand_paths, parse_device
from loader.backends import get_backend, parse_candidates
from loader.backends.base import OpenContext
from loader.distributed import DistContext, make_context
from loader.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    LoaderError,
    LoaderIOError,
)
from loader.fill import FreshFiller, fresh_fills
from loader.format import TensorInfo, read_header
from loader.memory import BufferPool, HostBuffer
from loader.pipeline import OpenFile, Pipeline, Stats
from loader.plan import FileSpec, Plan, assign_owners, build_plan
from loader.tuning import auto_candidates, derive_tuning

log = logging.getLogger(__name__)

MiB = 1 << 20


class SafeOpen:
    """A set of safetensors files opened for loading.  Use as a context manager.

    Tensors come out in file order across all files (``tensors()``), or one at a time
    (``get_tensor``).  ``__init__`` lists the arguments.
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
        """Open safetensors files for fast loading (``safe_open`` is this class).

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
            ConfigError: an argument or `LOADER_*` setting is not usable.
        """
        if framework not in ("pt", "torch"):
            raise ConfigError(f"{framework!r} is not supported; use 'pt'", key="framework")
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
        self._filler = FreshFiller()
        self._lock = threading.Lock()
        self.last_stats: Stats | None = None
        try:
            for p in self.paths:
                self._open_one(p)
            self.tuning = derive_tuning(
                self.files,
                threads,
                chunk_size,
                staging_size,
                buffer_size,
                fresh_fills=fresh_fills(copy, self.device.type == "cpu", self.dist is not None),
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _open_one(self, path: str) -> None:
        try:
            rf = tierfs.resolve(path)
        except OSError as e:
            raise LoaderIOError(f"cannot open: {e.strerror}", path=path, errno=e.errno) from e
        try:
            header = read_header(rf.requested, fd=rf.fd)
        except OSError as e:
            rf.close()
            raise LoaderIOError(
                f"cannot read the header: {e.strerror}", path=path, errno=e.errno
            ) from e
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
                    raise CheckpointError(f"tensor {t.name!r} is also in {other}", path=path)
                self._index[t.name] = (fi, t)
            log.debug("%s: backend %s (fs %s, via %s)", path, name, rf.fs, rf.read_path)
            return
        rf.close()
        raise BackendUnavailableError(
            "no backend can read this file: " + "; ".join(reasons), path=path
        )

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
        self._filler.close()

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
            filler=self._filler,
        )

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every tensor, in file order.

        Raises:
            LoaderIOError: a read failed.
            IntegrityError: ``verify=True`` and a file's hash does not match tierfs's.
        """
        if not self.files:
            raise LoaderError("the session is closed")
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


# The safetensors-style entry point: ``safe_open(...)`` is the session itself.
safe_open = SafeOpen


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
