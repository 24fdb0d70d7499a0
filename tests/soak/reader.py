"""A soak reader process: reads models through the mount and checks every byte.

Run by the soak as ``python -m tests.soak.reader SEED BASE``. It reads whole files and
random ranges, with ``read()`` and with ``mmap(MAP_SHARED)``, and compares them with the
bytes rebuilt from the manifest's seeds. Its counters go to ``BASE/readers/SEED.json``.

An error is an expected outage when an outage window (the daemon down, the cold store
hidden) was open when the operation began or ended, or opened and closed in between; the
reader then backs off and retries. Any other error is a reader error, and a wrong byte is
always a mismatch. A mmap reader hit by SIGBUS (the daemon died under it) dies; before each
mmap operation it records the outage state it began under, so that the soak can tell.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import xxhash

from tests.soak.world import file_bytes

CHUNK = 256 << 10


class Reader:
    def __init__(self, seed: int, base: Path) -> None:
        self.rng = random.Random(seed)
        self.base = base
        self.mountpoint = base / "mnt"
        manifest = json.loads((base / "manifest.json").read_text())
        self.expected = {relpath: file_bytes(spec) for relpath, spec in manifest.items()}
        self.hashes = {relpath: spec["xxh3"] for relpath, spec in manifest.items()}
        self.out = base / "readers" / f"{seed}.json"
        self.op_file = base / "readers" / f"{seed}.op"
        self.counts = {"bytes_verified": 0, "mismatches": 0, "reader_errors": 0, "outages": 0}
        self.counts |= {"whole_reads": 0, "range_reads": 0, "mmap_ops": 0, "short_reads": 0}
        self.problems: list[str] = []
        self.last_flush = 0.0

    def outages(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.base / "outages.json").read_text()))
        except (OSError, ValueError):
            return {"down": False, "down_gen": 0, "hidden": False, "hidden_gen": 0}

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < 0.5:
            return
        self.last_flush = now
        temp = self.out.with_suffix(".tmp")
        temp.write_text(json.dumps({**self.counts, "problems": self.problems[-20:]}))
        os.replace(temp, self.out)

    def run(self) -> None:
        stop = self.base / "stop"
        names = sorted(self.expected)
        while not stop.exists():
            relpath = self.rng.choice(names)
            use_mmap = self.rng.random() < 0.4 and len(self.expected[relpath]) > 0
            before = self.outages()
            if use_mmap:
                self.op_file.write_text(json.dumps(before))
            try:
                self.one(relpath, use_mmap)
            except OSError as exc:
                after = self.outages()
                if in_outage(before, after):
                    self.counts["outages"] += 1
                    time.sleep(0.2)
                else:
                    self.counts["reader_errors"] += 1
                    when = time.strftime("%H:%M:%S")
                    self.problems.append(f"{when} {relpath}: {exc!r} ({self.where(relpath)})")
                    self.flush(force=True)
            self.flush()
        self.flush(force=True)

    def where(self, relpath: str) -> str:
        """What the mount says of a file that failed: is it listed, and which copy serves it."""
        path = self.mountpoint / relpath
        try:
            os.stat(path)
            backing = os.getxattr(path, "user.tierfs.backing").decode()
        except OSError as exc:
            return f"stat or xattr: {exc.strerror}"
        return (
            f"listed, backing {backing}, which {'exists' if os.path.exists(backing) else 'is gone'}"
        )

    def one(self, relpath: str, use_mmap: bool) -> None:
        expected = self.expected[relpath]
        with open(self.mountpoint / relpath, "rb", buffering=0) as f:
            fd = f.fileno()
            if self.rng.random() < 0.3:
                # Make the daemon (or the backing file) serve it, not the page cache.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(fd).st_size
            if size != len(expected):
                self.mismatch(f"{relpath}: size {size}, cold has {len(expected)}")
                return
            view: Any = None
            if use_mmap:
                view = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
                self.counts["mmap_ops"] += 1
            try:
                if self.rng.random() < 0.4:
                    self.whole(relpath, fd, view, expected)
                else:
                    self.ranges(relpath, fd, view, expected)
            finally:
                if view is not None:
                    view.close()

    def read(self, fd: int, view: Any, offset: int, length: int) -> bytes:
        if view is not None:
            return bytes(view[offset : offset + length])
        return os.pread(fd, length, offset)

    def whole(self, relpath: str, fd: int, view: Any, expected: bytes) -> None:
        h = xxhash.xxh3_128()
        pos = 0
        while pos < len(expected):
            block = self.read(fd, view, pos, CHUNK)
            if not block:
                self.mismatch(f"{relpath}: ends at {pos} of {len(expected)}")
                return
            if block != expected[pos : pos + len(block)]:
                self.mismatch(_difference(relpath, pos, block, expected, view is not None))
                return
            h.update(block)
            pos += len(block)
        self.counts["whole_reads"] += 1
        if h.hexdigest() != self.hashes[relpath]:
            self.mismatch(f"{relpath}: whole read hashes {h.hexdigest()}")
            return
        self.counts["bytes_verified"] += pos

    def ranges(self, relpath: str, fd: int, view: Any, expected: bytes) -> None:
        for _ in range(self.rng.randint(3, 20)):
            offset = self.rng.randrange(0, len(expected))
            length = self.rng.choice((1, 4095, 4096, 65536, 1 << 20, self.rng.randint(1, 2 << 20)))
            want = expected[offset : offset + length]
            pos = offset
            while pos < offset + len(want):
                # A read may return fewer bytes than asked (the daemon dying mid-request
                # does that); like any careful reader, ask again for the rest.
                data = self.read(fd, view, pos, offset + len(want) - pos)
                if not data:
                    self.mismatch(f"{relpath}: ends at {pos}, expected {len(expected)} bytes")
                    return
                if data != expected[pos : pos + len(data)]:
                    self.mismatch(_difference(relpath, pos, data, expected, view is not None))
                    return
                if pos + len(data) < offset + len(want):
                    self.counts["short_reads"] += 1
                pos += len(data)
                self.counts["bytes_verified"] += len(data)
            self.counts["range_reads"] += 1

    def mismatch(self, message: str) -> None:
        self.counts["mismatches"] += 1
        self.problems.append(f"{time.strftime('%H:%M:%S')} {message} (outages {self.outages()})")
        self.flush(force=True)


def _difference(relpath: str, pos: int, data: bytes, expected: bytes, mapped: bool) -> str:
    """Where `data`, read at `pos`, first differs from the expected bytes, and how."""
    want = expected[pos : pos + len(data)]
    first = next(i for i, (a, b) in enumerate(zip(data, want, strict=True)) if a != b)
    tail = data[first : first + 64]
    how = "mmap" if mapped else "read"
    zeros = " (zeros there)" if tail == bytes(len(tail)) else ""
    return f"{relpath}: {len(data)} bytes at {pos} ({how}) first differ at {pos + first}{zeros}"


def in_outage(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether an operation that began under `before` and ended under `after` overlapped
    an outage window."""
    return (
        before["down"]
        or after["down"]
        or before["down_gen"] != after["down_gen"]
        or before["hidden"]
        or after["hidden"]
        or before["hidden_gen"] != after["hidden_gen"]
    )


if __name__ == "__main__":
    Reader(int(sys.argv[1]), Path(sys.argv[2])).run()
