"""Backend interface: a backend opens a resolved file for a load and reads aligned ranges."""

from __future__ import annotations

import abc
import ctypes
import errno
import mmap
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from loader.errors import BackendUnavailableError, LoaderIOError
from loader.tierfs import ResolvedFile


@dataclass(frozen=True)
class OpenContext:
    """What a backend may need to decide whether it can serve a file."""

    device: torch.device
    copy: bool


class BackendFile(abc.ABC):
    """An open file as one backend reads it."""

    def __init__(self, rf: ResolvedFile) -> None:
        self.rf = rf

    @property
    def path(self) -> str:
        return self.rf.read_path

    @abc.abstractmethod
    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        """Fill ``buf`` (page aligned, ``len(buf)`` a multiple of 4 KiB) from ``offset``.

        At least ``need`` bytes must arrive; the rest may be cut short by end of file.

        Raises:
            LoaderIOError: the read failed or the file ended early.
        """

    def view(self, offset: int, length: int) -> memoryview | None:
        """Zero-copy bytes of the file, where the backend has them mapped."""
        return None

    def mapped_address(self) -> int | None:
        """Address of a mapping of the whole file, where the backend has one to copy from."""
        return None

    def read_device(self, dst: torch.Tensor, offset: int) -> object:
        """Start reading ``dst.nbytes`` bytes at ``offset`` into device memory; returns a handle
        with ``.get()``.  Only device backends implement it."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - most backends hold nothing beyond the fd
        """Release what ``open`` acquired (the resolved fd is closed by the session)."""


class Backend(abc.ABC):
    """A way of reading files.  Subclasses register themselves with ``register_backend``."""

    name: ClassVar[str]
    #: The backend reads into device memory itself (plan mode "device").
    device_direct: ClassVar[bool] = False
    #: The backend can hand out zero-copy views (plan mode "mapped" with copy=False on CPU).
    zero_copy: ClassVar[bool] = False

    @abc.abstractmethod
    def open(self, rf: ResolvedFile, ctx: OpenContext) -> BackendFile:
        """Open ``rf`` for this load.

        Raises:
            BackendUnavailableError: this backend cannot serve the file; the message says why.
        """


class FileMapping:
    """A private, never written mapping of a whole file, and its address.

    Private and writable so that tensors can be zero-copy views of it (torch wants writable
    memory); nothing writes, so every page stays the page cache's or the RAM tier's own.
    """

    def __init__(self, rf: ResolvedFile) -> None:
        self.mm = mmap.mmap(rf.fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        # The ctypes object is dropped at once, so the mapping is not left exported.
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))


def unavailable(backend: str, rf: ResolvedFile, why: str) -> BackendUnavailableError:
    return BackendUnavailableError(f"backend {backend!r} cannot be used: {why}", path=rf.requested)


def io_error(path: str, what: str, e: OSError) -> LoaderIOError:
    return LoaderIOError(f"{what}: {e.strerror or e}", path=path, errno=e.errno)


def pread_full(fd: int, path: str, buf: memoryview, offset: int, need: int) -> int:
    """Loop over short reads until ``need`` bytes arrived or the file ended."""
    done = 0
    while done < len(buf):
        try:
            n = os.preadv(fd, [buf[done:]], offset + done)
        except InterruptedError:
            continue
        except OSError as e:
            raise io_error(path, f"read of {len(buf) - done} bytes at {offset + done}", e) from e
        if n == 0:
            break
        done += n
        if done >= need:
            break
    if done < need:
        raise LoaderIOError(
            f"file ended at {offset + done}, expected data up to "
            f"{offset + need} (truncated while loading?)",
            path=path,
            errno=errno.EIO,
        )
    return done
