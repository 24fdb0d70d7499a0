"""GPUDirect Storage through kvikio: file bytes land in device memory without a host copy.

kvikio is an optional extra (``tierfs[gds]``).  Where the GDS driver is missing kvikio runs
in compatibility mode (POSIX reads through its own bounce buffers); that is logged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from loader.backends.base import Backend, BackendFile, OpenContext, unavailable
from loader.tierfs import MEMORY_FS, ResolvedFile

log = logging.getLogger(__name__)
_compat_logged = False


def compat_mode() -> bool:
    """Whether kvikio would bounce reads through host memory (no GDS driver), which the
    loader's own pinned staging ring does as well, with its own tuned readers.

    Raises:
        ImportError: kvikio is not installed.
    """
    import kvikio.defaults  # a submodule: ``import kvikio`` alone does not bind it

    try:
        return bool(kvikio.defaults.is_compat_mode_preferred())
    except AttributeError:  # kvikio before 24.10
        return bool(getattr(kvikio.defaults, "compat_mode", lambda: False)())


def native_gds() -> bool:
    """Whether kvikio is installed and reads go straight from storage into GPU memory."""
    try:
        return not compat_mode()
    except (ImportError, OSError, RuntimeError):  # absent, or its library fails to load
        return False


class GdsFile(BackendFile):
    def __init__(self, rf: ResolvedFile, handle: Any) -> None:
        super().__init__(rf)
        self.handle = handle

    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        # Host reads are served by a plain pread; only device reads go through cuFile.
        from loader.backends.base import pread_full

        pread_full(self.rf.fd, self.path, buf, offset, need)

    def read_device(self, dst: torch.Tensor, offset: int) -> object:
        flat = dst.view(-1).view(torch.uint8) if dst.dim() else dst.reshape(1).view(torch.uint8)
        return self.handle.pread(flat, flat.numel(), offset)

    def close(self) -> None:
        self.handle.close()


class GdsBackend(Backend):
    """kvikio ``CuFile.pread`` straight into the destination CUDA tensors."""

    name = "gds"
    device_direct = True

    def open(self, rf: ResolvedFile, ctx: OpenContext) -> BackendFile:
        global _compat_logged
        if ctx.device.type != "cuda":
            raise unavailable(self.name, rf, f"device is {ctx.device}, not CUDA")
        if not torch.cuda.is_available():
            raise unavailable(self.name, rf, "CUDA is not available")
        if rf.fs in MEMORY_FS:
            raise unavailable(self.name, rf, f"{rf.fs} has no block device for GDS")
        try:
            import kvikio
        except ImportError as e:
            raise unavailable(
                self.name, rf, "kvikio is not installed (pip install 'tierfs[gds]')"
            ) from e
        if compat_mode() and not _compat_logged:
            _compat_logged = True
            log.info(
                "kvikio runs in compatibility mode (no GDS driver): reads are bounced "
                "through host memory"
            )
        try:
            handle = kvikio.CuFile(rf.read_path, "r")
        except Exception as e:  # kvikio raises its own runtime errors
            raise unavailable(self.name, rf, f"kvikio cannot open the file ({e})") from e
        return GdsFile(rf, handle)
