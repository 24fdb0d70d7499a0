"""What every benchmark section shares: the machine, timing, test files, a tierfs mount
and the sections of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import mmap
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
sys.path.insert(0, str(REPO))

from tierfs.daemon.mounting import lazy_unmount  # noqa: E402
from tierfs.daemon.spawn import start_daemon  # noqa: E402
from tierfs.errors import MountError  # noqa: E402
from tierfs.mountinfo import mount_entry  # noqa: E402

GB = 1e9


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def timed(fn: Callable[[], int]) -> float:
    """Run fn (which returns bytes handled) and return GB/s."""
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start) / GB


def dd(path: Path) -> Callable[[], int]:
    def run() -> int:
        subprocess.run(
            ["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True
        )
        return path.stat().st_size

    return run


def mmap_read(path: Path) -> Callable[[], int]:
    """Touch every page through a shared mapping, as llama.cpp's loader does."""

    def run() -> int:
        import xxhash

        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            m.madvise(mmap.MADV_WILLNEED)
            xxhash.xxh3_64_intdigest(memoryview(m))
            return len(m)

    return run


def safetensors_load(path: Path) -> Callable[[], int]:
    def run() -> int:
        import torch
        import xxhash
        from safetensors.torch import load_file

        # load_file maps the file lazily; hashing every tensor makes it read all bytes,
        # without allocating new memory that would measure the VM instead.
        tensors = load_file(path)
        n = 0
        for t in tensors.values():
            xxhash.xxh3_64_intdigest(t.view(torch.int16).numpy().data)
            n += t.numel() * t.element_size()
        del tensors
        return n

    return run


def fresh_memory_rate(size: int = 1 << 30) -> float:
    """GB/s of writing into memory never touched before: the VM's first-touch cost."""
    with mmap.mmap(-1, size) as m:
        block = b"\1" * (4 << 20)
        start = time.perf_counter()
        for off in range(0, size, len(block)):
            m[off : off + len(block)] = block
        return size / (time.perf_counter() - start) / GB


SETTLE_S = 1.0


class TierfsMount:
    """A tierfs daemon over given cold stores, for the length of a with-block."""

    def __init__(
        self,
        workdir: Path,
        cold: list[tuple[str, Path]],
        passthrough: str = "auto",
        tree: Path = REPO,
    ) -> None:
        # `tree`: the tierfs source to run (another revision's checkout, to compare with).
        self.tree = tree
        self.mountpoint = workdir / "mnt"
        self.config = workdir / "bench.toml"
        self.log = workdir / "tierfs.log"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        lines = [f'mountpoint = "{self.mountpoint}"', f'state_dir = "{workdir / "state"}"']
        for name, path in cold:
            lines += ["[[cold]]", f'name = "{name}"', f'path = "{path}"']
        lines += ["[read]", f'passthrough = "{passthrough}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        # Only once the daemon serves is the readahead raised.
        try:
            self.process = start_daemon(
                self.config, self.mountpoint, self.log, timeout=30, cwd=self.tree
            )
        except MountError as exc:
            raise SystemExit(f"{exc}; see {self.log}") from None
        # Let the daemon finish its start-up scan: a first read in service comes later.
        time.sleep(SETTLE_S)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if mount_entry(self.mountpoint) is not None:
            lazy_unmount(self.mountpoint)

    def stats(self) -> dict[str, int]:
        return dict(json.loads(os.getxattr(self.mountpoint, "user.tierfs.stats")))


def cached_kib() -> int:
    """The page cache of the whole machine (`Cached` in /proc/meminfo), KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1])
    raise SystemExit("no Cached line in /proc/meminfo")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(64 << 20)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(chunk), size - written)
            f.write(chunk[:n])
            written += n


def make_checkpoint(path: Path, size: int) -> None:
    """A bf16 safetensors file of about `size` bytes, random data."""
    if path.exists() and abs(path.stat().st_size - size) < (64 << 20):
        return
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    per = 64 << 20
    tensors = {
        f"layer.{i}.weight": torch.randint(-(2**15), 2**15, (per // 2,), dtype=torch.int16).view(
            torch.bfloat16
        )
        for i in range(max(1, size // per))
    }
    save_file(tensors, str(path))


def write_section(name: str, body: str, title: str) -> None:
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\nMachine: {machine()}. Date: {stamp}.\n\n"
        f"{body}\n<!-- /bench:{name} -->"
    )
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block + "\n"
    )
    DOC.write_text(text)
