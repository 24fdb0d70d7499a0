"""Command line tools: ``python -m loader inspect FILE`` and ``python -m loader bench PATHS``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from loader.arguments import expand_paths
from loader.backends import available_backends
from loader.errors import BackendUnavailableError
from loader.format import describe, read_header
from loader.session import safe_open
from tierfs.errors import TierfsError


def _inspect(args: argparse.Namespace, console: Console) -> int:
    for path in expand_paths(args.file):
        info = describe(read_header(path))
        if args.json:
            print(json.dumps(info, indent=2))
            continue
        total = info["file_bytes"]
        console.print(
            f"[bold]{path}[/]  {total:,} bytes, header {info['header_bytes']:,} bytes, "
            f"{len(info['tensors'])} tensors"
        )
        if info["metadata"]:
            meta = Table("key", "value", title="metadata")
            for k, v in info["metadata"].items():
                meta.add_row(k, v if len(v) < 200 else v[:200] + "...")
            console.print(meta)
        table = Table("name", "dtype", "shape", "begin", "end", "bytes")
        for t in info["tensors"]:
            b, e = t["offsets"]
            table.add_row(
                t["name"], t["dtype"], str(tuple(t["shape"])), f"{b:,}", f"{e:,}", f"{e - b:,}"
            )
        console.print(table)
    return 0


def _drop_caches(console: Console) -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        console.print(f"[yellow]cannot drop caches ({e.strerror}); results are warm[/]")
        return False


def _bench(args: argparse.Namespace, console: Console) -> int:
    backends = args.backends.split(",") if args.backends else available_backends()
    paths = expand_paths(args.paths)
    total = 0
    with safe_open(paths) as f:
        for of in f.files:
            total += of.header.data_size
        auto = sorted(set(f.backends.values()))
    console.print(
        f"{len(paths)} file(s), {total / 1e9:.2f} GB; automatic choice: {', '.join(auto)}"
    )
    table = Table("backend", "copy", "GB/s", "seconds", "note")
    for name in ["auto", *backends]:
        for _ in range(args.repeat):
            if args.cold:
                _drop_caches(console)
            try:
                gbps, secs = _one(paths, None if name == "auto" else name, args, total)
            except BackendUnavailableError as e:
                table.add_row(name, str(not args.no_copy), "-", "-", e.message)
                break
            except TierfsError as e:
                table.add_row(name, str(not args.no_copy), "-", "-", f"error: {e}")
                break
            table.add_row(
                name,
                str(not args.no_copy),
                f"{gbps:.2f}",
                f"{secs:.2f}",
                "cold" if args.cold else "",
            )
    console.print(table)
    return 0


def _one(
    paths: list[str], backend: str | None, args: argparse.Namespace, total: int
) -> tuple[float, float]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(backend or "auto", total=total)
        t0 = time.perf_counter()
        with safe_open(paths, device=args.device, backend=backend, copy=not args.no_copy) as f:
            for _name, t in f.tensors():
                progress.advance(task, t.numel() * t.element_size())
            if args.device != "cpu":
                import torch

                torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    return total / secs / 1e9, secs


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m loader``."""
    parser = argparse.ArgumentParser(prog="python -m loader")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_in = sub.add_parser("inspect", help="print a safetensors header")
    p_in.add_argument("file")
    p_in.add_argument("--json", action="store_true", help="machine-readable output")
    p_b = sub.add_parser("bench", help="load with each backend and print GB/s")
    p_b.add_argument("paths", nargs="+")
    p_b.add_argument("--backends", help="comma-separated subset (default: all)")
    p_b.add_argument("--device", default="cpu")
    p_b.add_argument("--no-copy", action="store_true", help="copy=False")
    p_b.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    p_b.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    console = Console()
    try:
        if args.cmd == "inspect":
            return _inspect(args, console)
        return _bench(args, console)
    except TierfsError as e:
        console.print(f"[red]error:[/] {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
