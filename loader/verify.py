"""Whole-file xxh3-128 checks against the hash tierfs publishes, fed while streaming.

A file is checked only when the pass covers every one of its tensors: the hash is over the
whole file (length prefix, header, data), so a partial pass cannot check it.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

import torch

from loader.errors import IntegrityError
from loader.memory import tensor_bytes
from loader.plan import Plan, PlannedTensor

if TYPE_CHECKING:
    from loader.pipeline import OpenFile

log = logging.getLogger(__name__)


class FileHashes:
    """One running hash per checked file; tensors must be fed in file order."""

    def __init__(self, files: list[OpenFile], plan: Plan) -> None:
        import xxhash

        self.files = files
        self._hashers: dict[int, Any] = {}
        self._left: dict[int, int] = {}
        covered: dict[int, int] = {}
        for t in plan.tensors:
            covered[t.file] = covered.get(t.file, 0) + 1
        for fi, f in enumerate(files):
            if not f.rf.xxh3:
                log.debug("verify: no user.tierfs.xxh3 for %s; not checked", f.rf.requested)
                continue
            if covered.get(fi, 0) != len(f.header.tensors):
                continue
            h = xxhash.xxh3_128()
            h.update(struct.pack("<Q", f.header.header_len))
            h.update(f.header.raw)
            self._hashers[fi] = h
            self._left[fi] = covered.get(fi, 0)
            if self._left[fi] == 0:
                self._check(fi)

    def __bool__(self) -> bool:
        return bool(self._hashers)

    def hasher(self, fi: int) -> Any:
        """The running hash of file ``fi``, for bytes hashed before they reach a tensor."""
        return self._hashers.get(fi)

    def tensor_done(self, t: PlannedTensor, tensor: torch.Tensor, hashed: bool) -> None:
        """Account for tensor ``t``; hash its bytes unless they were hashed already.

        Raises:
            IntegrityError: it was the file's last tensor and the hash does not match.
        """
        h = self._hashers.get(t.file)
        if h is None:
            return
        if not hashed and t.nbytes:
            src = tensor if tensor.device.type == "cpu" else tensor.cpu().contiguous()
            h.update(tensor_bytes(src))
        self._left[t.file] -= 1
        if self._left[t.file] == 0:
            self._check(t.file)

    def _check(self, fi: int) -> None:
        h = self._hashers.pop(fi)
        f = self.files[fi]
        got = h.hexdigest()
        if got != f.rf.xxh3:
            raise IntegrityError(
                f"xxh3-128 mismatch: expected {f.rf.xxh3}, read {got}",
                path=f.rf.requested,
                expected=str(f.rf.xxh3),
                actual=got,
            )
        log.debug("verify: %s matches %s", f.rf.requested, got)
