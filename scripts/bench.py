"""Side-by-side benchmarks of tierfs, written to docs/benchmarks.md.

Every figure is measured in the same run as the bound it is compared with, because these
machines are noisy. Sections: ``fuse`` (reads through the mount against reads of the
backing file), ``loader`` (scripts/bench_loader.py), ``promote`` (when tiers exist) and
``metadata`` (scripts/bench_metadata.py).

Usage: scripts/bench [fuse|promote|loader|metadata|all] [--size 2G] [--repeat 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
sys.path.insert(0, str(REPO))

from tierfs.config import parse_size  # noqa: E402
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
            xxhash.xxh3_64_intdigest(t.view(torch.int16).numpy())
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
MODES = ("off", "require")  # [read] passthrough: served by the daemon, or by passthrough
MODE_NAMES = {"off": "daemon", "require": "passthrough"}


@dataclass
class Row:
    case: str
    direct: list[float]
    mount: dict[str, list[float]]
    # Per repetition, mount / direct measured next to each other: steadier than a ratio of
    # medians when other jobs come and go.
    ratios: dict[str, list[float]]

    def ratio(self, mode: str) -> float:
        return statistics.median(self.ratios[mode])

    def best_ratio(self, mode: str) -> float:
        """Best against best: what each can do when other jobs leave it alone."""
        return max(self.mount[mode]) / max(self.direct)


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

    def __enter__(self) -> TierfsMount:
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


def bench_fuse(workdir: Path, size: int, repeat: int) -> str:
    # Each store keeps its files under its own directory, so the merged namespace shows
    # both copies: <mnt>/disk/... from the disk store and <mnt>/ram/... from tmpfs, which
    # stands for a hot copy on a RAM tier (the read path cannot tell them apart).
    disk_store = workdir / "disk-store"
    disk = disk_store / "disk"
    make_file(disk / "big.bin", size)
    make_checkpoint(disk / "model.safetensors", size)
    rows: list[Row] = []
    growth: dict[str, list[float]] = {mode: [] for mode in MODES}
    memory_rates = [fresh_memory_rate() for _ in range(repeat)]
    with tmpfs(workdir / "ram-store", f"{(2 * size >> 20) + 256}M") as ram_store:
        ram = ram_store / "ram"
        ram.mkdir()
        shutil.copyfile(disk / "big.bin", ram / "big.bin")
        shutil.copyfile(disk / "model.safetensors", ram / "model.safetensors")
        cold = [("disk", disk_store), ("ram", ram_store)]
        stores = dict(cold)

        def measure(
            case: str,
            rel: str,
            make: Callable[[Path], Callable[[], int]],
            prepare: Callable[[], None],
        ) -> None:
            row = Row(case, [], {mode: [] for mode in MODES}, {mode: [] for mode in MODES})
            runs = ["direct", *MODES]
            for rep in range(repeat):
                sample: dict[str, float] = {}
                # Rotate the order, so that no method always runs first (or last).
                for who in runs[rep % len(runs) :] + runs[: rep % len(runs)]:
                    if who == "direct":
                        prepare()
                        sample[who] = timed(make(stores[rel.split("/")[0]] / rel))
                        continue
                    # A fresh mount per sample: no FUSE page is cached from an earlier one.
                    with TierfsMount(workdir, cold, who) as m:
                        prepare()
                        sample[who] = timed(make(m.mountpoint / rel))
                row.direct.append(sample["direct"])
                for mode in MODES:
                    row.mount[mode].append(sample[mode])
                    row.ratios[mode].append(sample[mode] / sample["direct"])
            rows.append(row)

        def warm_disk() -> None:
            drop_caches()
            for name in ("big.bin", "model.safetensors"):
                dd(disk / name)()

        def nothing() -> None:
            pass

        measure("hot (tmpfs), dd bs=1M", "ram/big.bin", dd, nothing)
        measure("hot (tmpfs), mmap(MAP_SHARED), every page", "ram/big.bin", mmap_read, nothing)
        measure(
            "hot (tmpfs), safetensors load_file", "ram/model.safetensors", safetensors_load, nothing
        )
        measure("cold disk, cold cache, dd bs=1M", "disk/big.bin", dd, drop_caches)
        measure("cold disk, warm cache, dd bs=1M", "disk/big.bin", dd, warm_disk)
        measure(
            "cold disk, cold cache, safetensors load_file",
            "disk/model.safetensors",
            safetensors_load,
            drop_caches,
        )

        # RAM spent: how much the machine's page cache grows when a hot file, already in
        # RAM, is read once through a fresh mount.
        for _ in range(repeat):
            for mode in MODES:
                with TierfsMount(workdir, cold, mode) as m:
                    before = cached_kib()
                    dd(m.mountpoint / "ram" / "big.bin")()
                    growth[mode].append((cached_kib() - before) * 1024 / size)
    return render_fuse(rows, growth, size, repeat, memory_rates)


def render_fuse(
    rows: list[Row],
    growth: dict[str, list[float]],
    size: int,
    repeat: int,
    memory_rates: list[float],
) -> str:
    daemon, passthrough = MODES
    out = [
        f"First reads through the mount against reads of the backing file, {size / 2**30:.1f} GiB"
        f" file, {repeat} repetitions: median GB/s (in brackets, the ratio to the direct read:"
        " the median of the ratios to the direct read taken next to it / best against best)."
        " The order of the three rotates between repetitions. Each mount sample uses a fresh"
        " mount, so no FUSE page is cached from an earlier one."
        " *daemon*:"
        ' `[read] passthrough = "off"`, every read crosses into the daemon; *passthrough*: the'
        " kernel reads the backing file itself.",
        "",
        "| case | direct | daemon | passthrough |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row.case} | {statistics.median(row.direct):.2f} | "
            f"{statistics.median(row.mount[daemon]):.2f} "
            f"({row.ratio(daemon):.2f} / {row.best_ratio(daemon):.2f}) | "
            f"{statistics.median(row.mount[passthrough]):.2f} "
            f"({row.ratio(passthrough):.2f} / {row.best_ratio(passthrough):.2f}) |"
        )
    out += [
        f"| page-cache growth reading the hot file once, x its size | 0 (it is the tmpfs) | "
        f"{statistics.median(growth[daemon]):+.2f} | "
        f"{statistics.median(growth[passthrough]):+.2f} |",
        "",
        "Page-cache growth is the change of `Cached` in /proc/meminfo across one read through a"
        " fresh mount, as a multiple of the file's size (median; other jobs on the machine move"
        " it by a few hundredths). Without passthrough the FUSE inode caches a second copy of"
        " the tmpfs pages; with it, the reader is served from the tmpfs pages themselves.",
        "",
        f"First touch of fresh memory in the same run: {statistics.median(memory_rates):.2f} GB/s"
        " (median), 4 KiB pages. A first read through the daemon has to fill new page-cache"
        " memory and cross Python once per 1 MiB request; that, not the backing store, is what"
        " limits it here.",
    ]
    return "\n".join(out)


def fio_read_bound(path: Path) -> float:
    """fio's sequential O_DIRECT read of `path` (io_uring, 4 MiB, depth 16), GB/s."""
    drop_caches()
    result = subprocess.run(
        [
            "fio",
            "--name=bound",
            f"--filename={path}",
            "--rw=read",
            "--bs=4M",
            "--iodepth=16",
            "--ioengine=io_uring",
            "--direct=1",
            "--output-format=json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(result.stdout)["jobs"][0]["read"]["bw_bytes"]) / GB


def direct_huge_bound(path: Path, chunk: int = 16 << 20, depth: int = 8) -> float:
    """O_DIRECT sequential read of `path` into reused huge-page buffers, GB/s.

    On this VM DMA into 4 KiB pages (fio's buffers) is several times slower than into huge
    pages, so fio understates what the disk delivers; this is the stricter ceiling.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tierfs.storage.iobuf import io_buffer

    drop_caches()
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buffers = [io_buffer(chunk) for _ in range(depth)]
    offsets = list(range(0, size, chunk))

    def worker(i: int) -> None:
        for j in range(i, len(offsets), depth):
            os.preadv(fd, [buffers[i]], offsets[j])

    start = time.perf_counter()
    with ThreadPoolExecutor(depth) as pool:
        list(pool.map(worker, range(depth)))
    elapsed = time.perf_counter() - start
    os.close(fd)
    for buffer in buffers:
        buffer.close()
    return size / elapsed / GB


class TieredMount(TierfsMount):
    """A mount with one RAM tier; promotion on open is off so only commands move data."""

    def __init__(self, workdir: Path, cold: list[tuple[str, Path]], tier: Path, size: str) -> None:
        super().__init__(workdir, cold, "auto")
        self.tier = tier
        with open(self.config, "a") as f:
            f.write(
                f'[[tier]]\nname = "ram0"\npath = "{tier}"\nsize = "{size}"\n'
                "[policy]\npromote_on_open = false\n"
            )

    def client(self) -> Any:
        from tierfs.control.client import ControlClient

        return ControlClient(self.mountpoint.parent / "state" / "control.sock")


def promote_rate(mount: TieredMount, model: str) -> float:
    """Promote a model and return the copy's GB/s as the daemon timed it (verify included)."""
    with mount.client() as client:
        job = client.promote(model, None)
        while job["state"] in ("queued", "running"):
            time.sleep(0.05)
            job = client.job(job["id"])
        if job["state"] != "done":
            raise SystemExit(f"promotion failed: {job}")
        return float(job["bytes_total"]) / (job["finished"] - job["started"]) / GB


def bench_promote(workdir: Path, size: int, repeat: int) -> str:
    disk_store = workdir / "disk-store"
    source = disk_store / "disk" / "model.safetensors"
    make_checkpoint(source, size)
    tier = workdir / "tier"
    bounds: list[float] = []
    ceilings: list[float] = []
    rates: list[float] = []
    memory_rates: list[float] = []
    first = Row("reading the promoted file, first read (fresh mount)", [], [])
    reread = Row("reading the promoted file, second read", [], [])
    try:
        for _ in range(repeat):
            bounds.append(fio_read_bound(source))
            ceilings.append(direct_huge_bound(source))
            memory_rates.append(fresh_memory_rate())
            with TieredMount(workdir, [("disk", disk_store)], tier, f"{(size >> 20) + 512}M") as m:
                with m.client() as client:
                    client.demote("disk/model.safetensors")
                drop_caches()
                rates.append(promote_rate(m, "disk/model.safetensors"))
            hot = tier / "hot" / "disk" / "disk" / "model.safetensors"
            with TieredMount(workdir, [("disk", disk_store)], tier, f"{(size >> 20) + 512}M") as m:
                first.direct.append(timed(dd(hot)))
                first.mount.append(timed(dd(m.mountpoint / "disk" / "model.safetensors")))
                reread.direct.append(timed(dd(hot)))
                reread.mount.append(timed(dd(m.mountpoint / "disk" / "model.safetensors")))
    finally:
        subprocess.run(["umount", "-l", str(tier)], check=False)
    bound = statistics.median(bounds)
    ceiling = statistics.median(ceilings)
    rate = statistics.median(rates)
    lines = [
        f"Promotion of a {size / 2**30:.1f} GiB file from disk (cold cache) into a tmpfs tier,"
        f" median of {repeat}. The copy is timed by the daemon and includes re-reading the copy"
        " to verify its xxh3-128 before the rename.",
        "",
        "| measure | GB/s | ratio to fio | ratio to ceiling |",
        "|---|---:|---:|---:|",
        f"| fio O_DIRECT sequential read, io_uring, 4 MiB, depth 16 (the bound) | {bound:.2f} |"
        f" 1.00 | {bound / ceiling:.2f} |",
        f"| O_DIRECT into huge-page buffers, 16 MiB x 8 (the stricter ceiling) | {ceiling:.2f} |"
        f" {ceiling / bound:.2f} | 1.00 |",
        f"| tierfs promotion (O_DIRECT 8 MiB reads, depth 4, verified) | {rate:.2f} |"
        f" {rate / bound:.2f} | {rate / ceiling:.2f} |",
        f"| first touch of fresh memory (4 KiB pages), same run |"
        f" {statistics.median(memory_rates):.2f} | | |",
        "",
        "Reads through the mount after promotion, against reading the tmpfs copy directly:",
        "",
        "| case | direct GB/s | through tierfs GB/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in (first, reread):
        lines.append(
            f"| {row.case} | {statistics.median(row.direct):.2f} | "
            f"{statistics.median(row.mount):.2f} | {row.ratio:.2f} |"
        )
    return "\n".join(lines)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "section",
        nargs="?",
        default="all",
        choices=["fuse", "promote", "loader", "metadata", "all"],
    )
    parser.add_argument("--size", default="2G", help="size of the test file (default 2G)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-data")
    parser.add_argument("--device", default="cpu", help="loader section: cpu or cuda")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench needs root (drop_caches, tmpfs mounts)")
    size = parse_size(args.size)
    if args.section in ("fuse", "all"):
        body = bench_fuse(args.workdir, size, args.repeat)
        print(body)
        write_section("fuse", body, "Reads through the mount (issues 2 and 8)")
    if args.section in ("promote", "all"):
        body = bench_promote(args.workdir, size, args.repeat)
        print(body)
        write_section("promote", body, "Promotion into a RAM tier (issue 3)")
    if args.section in ("metadata", "all"):
        script = str(REPO / "scripts" / "bench_metadata.py")
        subprocess.run(
            [sys.executable, script, "--repeat", str(args.repeat), "--write"], check=True
        )
    if args.section in ("loader", "all"):
        # The loader's figures come with their raw data; the doc's loader section is written
        # from this JSON (see docs/benchmarks.md).
        out = REPO / "docs" / "data" / f"bench-loader-{datetime.now(UTC):%Y%m%d-%H%M}.json"
        command = [
            sys.executable,
            str(REPO / "scripts" / "bench_loader.py"),
            "--disk-dir",
            str(args.workdir / "loader"),
            "--repeat",
            str(args.repeat),
            "--out",
            str(out),
            "--device",
            args.device,
        ]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
