#!/usr/bin/env python3
"""Benchmark the loader against its peers on one multi-GiB bf16 checkpoint, into CPU memory
(the default) or into GPU memory (``--device cuda``), with the bounds measured in the same run.

Scenarios: cold from disk (page cache dropped before each run), warm from disk (the files
read through the page cache before each run) and from tmpfs.  Every method keeps every
tensor it loaded, in memory it owns, until the clock stops (scripts/loader_methods.py says
how for each).  Every measurement is a fresh process; the methods are interleaved in an
order that changes with each repetition (`balanced_order`), one scenario after the other
(so the tmpfs copies only take memory during their own), each scenario opening with one
discarded run, and the median is reported with each method's peak RSS.

Bounds, each a method of its own in the same rotation:

- ``bound-direct-fresh`` (cold, warm): O_DIRECT from the same files into fresh, kept memory;
- ``bound-copy-fresh`` (warm, tmpfs): a copy from the page cache or tmpfs into fresh, kept
  memory;
- ``bound-io-only`` (cold): O_DIRECT into reused buffers, the storage alone; no load into
  owned memory can reach it, because it touches no fresh memory;
- ``bound-h2d`` (CUDA): pinned host memory copied into fresh GPU memory, the link alone.
  A CUDA load is bounded by the slower of the storage and the link.

``loader-views`` (tmpfs only) is the loader with ``copy=False``: views of the hot copy's
pages, zero added RSS, reported apart because it reads nothing until a tensor is used.

    python scripts/bench_loader.py --size-gb 4.4 --shards 2 --repeat 3 --out bench.json

Fresh memory is the main cost here: the VM returns freed pages to the host a moment after
they are freed, and the first touch of such a page is several times slower than a touch of
one the guest still holds.  Each child therefore waits ``--settle`` seconds after its imports,
before the clock starts, so every method starts from the same state: whatever the previous
process freed has gone back to the host.  Dropping the page cache needs root: pass
``--no-drop`` while developing (cold figures are then not cold and are marked so).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_methods import LOADER_STATS, METHODS, MODULES, Checkpoint, loaded_bytes
from loader_report import report_lines, summarise

log = logging.getLogger("bench_loader")
PEERS = ["loader", "safetensors", "fastsafetensors", "runai", "tensorizer"]
CUDA_PEERS = ["loader", "safetensors", "fastsafetensors", "runai", "instanttensor"]
# Methods that run only in some scenarios, besides the peers.
EXTRA = {
    "disk-cold": ["bound-direct-fresh", "bound-io-only"],
    "disk-warm": ["bound-copy-fresh", "bound-direct-fresh"],
    "tmpfs": ["bound-copy-fresh", "loader-views"],
}
CUDA_EXTRA = {
    "disk-cold": ["bound-io-only", "bound-h2d"],
    "disk-warm": ["bound-h2d"],
    "tmpfs": ["bound-h2d"],
}


# --------------------------------------------------------------------------- one measurement
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class _ThreadPeak:
    """Samples the process's thread count while a load runs (every 10 ms)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            # Minus this sampler itself.
            self.peak = max(self.peak, len(os.listdir("/proc/self/task")) - 1)

    def __enter__(self) -> _ThreadPeak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _child(method: str, ck: Checkpoint, settle: float) -> dict[str, Any]:
    """One timed load in this (fresh) process; returns the figures as a dict."""
    import torch

    if method in MODULES:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        importlib.import_module(MODULES[method])
    if ck.device != "cpu":
        # The CUDA context belongs to start-up, not to the load.
        torch.empty(1, device=ck.device)
        torch.cuda.synchronize()
    time.sleep(settle)
    # Reset the peak RSS (VmHWM) so it measures the load, not the imports.
    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _status_kib("VmRSS")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with _ThreadPeak() as threads:
        t0 = time.perf_counter()
        keep = METHODS[method](ck)
        if ck.device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    want = torch.device(ck.device).type
    out = {
        # Tensors that did not land on the device asked for (a fair load has none).
        "off_device": sum(
            1 for v in keep.values() if isinstance(v, torch.Tensor) and v.device.type != want
        ),
        "bytes": loaded_bytes(keep),
        "seconds": dt,
        "tensors": len(keep),
        "rss_before_kib": rss0,
        "peak_rss_kib": _status_kib("VmHWM"),
        "rss_after_kib": _status_kib("VmRSS"),
        "minflt": ru1.ru_minflt - ru0.ru_minflt,
        "majflt": ru1.ru_majflt - ru0.ru_majflt,
        "user_s": ru1.ru_utime - ru0.ru_utime,
        "sys_s": ru1.ru_stime - ru0.ru_stime,
        "nivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
        "threads": threads.peak,
        **({"loader": dict(LOADER_STATS)} if LOADER_STATS else {}),
    }
    del keep
    return out


# --------------------------------------------------------------------------- orchestration
def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def warm_cache(ck: Checkpoint) -> None:
    """Read the files through the page cache, so every method finds them there (a method's
    own load would not do: O_DIRECT readers leave the cache cold)."""
    for p in [*ck.paths, *([ck.tensorizer] if ck.tensorizer else [])]:
        with open(p, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def before_sample(scen: str, ck: Checkpoint, drop: bool) -> None:
    """Put the page cache in the scenario's state: empty cold, holding the files warm."""
    if scen == "disk-cold" and drop:
        drop_caches()
    elif scen == "disk-warm":
        warm_cache(ck)


def run_child(
    method: str, ck: Checkpoint, timeout: int, settle: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_child", method, "--settle", str(settle)]
    cmd += ["--tfile", ck.tensorizer or "", "--device", ck.device, *ck.paths]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def make_checkpoint(out: Path, size_gb: float, shards: int) -> list[str]:
    """Random bf16 weights shaped like a transformer, split in ``shards`` files."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    per = int(size_gb * 1e9 / shards)
    paths = []
    layer = 0
    for s in range(shards):
        tensors: dict[str, torch.Tensor] = {}
        n = 0
        while n < per:
            for name, shape in (("q", (4096, 4096)), ("mlp", (11008, 4096)), ("norm", (4096,))):
                t = torch.randint(-32768, 32767, shape, dtype=torch.int16, generator=g)
                tensors[f"layers.{layer}.{name}"] = t.view(torch.bfloat16)
                n += t.numel() * 2
            layer += 1
        p = out / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, str(p))
        paths.append(str(p))
        del tensors
    return paths


def make_tensorizer(paths: list[str], out: Path) -> str | None:
    try:
        from safetensors.torch import load_file
        from tensorizer import TensorSerializer
    except ImportError:
        return None
    dst = out / "model.tensors"
    ser = TensorSerializer(str(dst))
    merged = {}
    for p in paths:
        merged.update(load_file(p))
    ser.write_state_dict(merged)
    ser.close()
    return str(dst)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    except OSError:
        mem = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "mem_gib": f"{int(mem) / 2**20:.1f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in (
        "torch",
        "safetensors",
        "fastsafetensors",
        "runai-model-streamer",
        "tensorizer",
        "instanttensor",
        "kvikio-cu13",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def _child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("method", choices=list(METHODS))
    p.add_argument("--tfile", default="")
    p.add_argument("--device", default="cpu")
    p.add_argument("--settle", type=float, default=0.0)
    p.add_argument("paths", nargs="+")
    a = p.parse_args(argv)
    ck = Checkpoint(a.paths, a.tfile or None, a.device)
    print(json.dumps(_child(a.method, ck, a.settle)))


def balanced_order(methods: list[str], rep: int) -> list[str]:
    """The order of the methods in repetition `rep`: row `rep` of a Williams design.

    A sample depends on the one before it (the memory it freed goes back to the VM's host,
    and the next process faults it in again), so each method must follow every other one
    as often as it can. A rotation does not do that: it keeps the cycle, and one method
    would always follow the same one. Here the first rows put each method first once and
    after a different method each time; for an odd count the mirrored rows finish the set.
    """
    n = len(methods)
    pattern, low, high = [0], 1, n - 1
    while len(pattern) < n:
        pattern.append(low)
        low += 1
        if len(pattern) < n:
            pattern.append(high)
            high -= 1
    row = [methods[(i + rep) % n] for i in pattern]
    return row if (rep // n) % 2 == 0 else row[::-1]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=4.4)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--disk-dir", default="/var/tmp/loader-bench")
    ap.add_argument("--tmpfs-dir", default="/dev/shm/loader-bench")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    ap.add_argument(
        "--methods",
        default=None,
        help="comma list of peers (default: every peer that runs on the device); the bounds "
        "always run",
    )
    ap.add_argument("--scenarios", default="disk-cold,disk-warm,tmpfs")
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds each child waits before its clock starts (freed memory returns to the "
        "host meanwhile)",
    )
    ap.add_argument("--no-drop", action="store_true", help="never drop the page cache")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", default="bench-loader.json")
    ap.add_argument(
        "--write", action="store_true", help="write the run's block into docs/benchmarks.md"
    )
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda:0" if args.device == "cuda" else args.device
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: this torch sees no CUDA device")
    peers = (args.methods or ",".join(PEERS if device == "cpu" else CUDA_PEERS)).split(",")
    unknown = [m for m in peers if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    extra = EXTRA if device == "cpu" else CUDA_EXTRA
    scenarios = args.scenarios.split(",")
    bad = [s for s in scenarios if s not in EXTRA]
    if bad:
        raise SystemExit(f"--scenarios: unknown scenario {bad[0]!r}; known: {', '.join(EXTRA)}")
    disk, shm = Path(args.disk_dir), Path(args.tmpfs_dir)
    drop = not args.no_drop

    log.info("generating %.1f GB in %d shards under %s", args.size_gb, args.shards, disk)
    disk_paths = make_checkpoint(disk, args.size_gb, args.shards)
    tdisk = make_tensorizer(disk_paths, disk) if "tensorizer" in peers else None
    on_disk = Checkpoint(disk_paths, tdisk, device)
    total = sum(os.path.getsize(p) for p in disk_paths)

    results: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(),
        "bytes": total,
        "files": len(disk_paths),
        "cold_dropped": drop,
        "settle_s": args.settle,
        "device": device,
        "runs": {},
    }
    if device != "cpu":
        import torch

        results["machine"]["gpu"] = torch.cuda.get_device_name(device)
    try:
        # One scenario at a time, so the tmpfs copies (twice the model with tensorizer's)
        # take no memory while the disk scenarios run.
        for scen in scenarios:
            ck = to_tmpfs(on_disk, shm) if scen == "tmpfs" else on_disk
            if scen == "tmpfs" and drop:
                # The disk copies' page cache has no part in this scenario; left in place, it
                # and the tmpfs copies filled 18 of 24 GB, and every load paid for reclaim.
                drop_caches()
            # A discarded first run: whichever process comes first after the scenario's set-up
            # (the tmpfs copies just written, the cache just dropped) pays for memory the VM
            # has just handed back to its host, several times over (docs/benchmarks.md).
            before_sample(scen, ck, drop)
            first = (extra[scen] or peers)[0]
            warmup = run_child(first, ck, args.timeout, args.settle)
            log.info("%-30s warm-up run, not recorded: %s", f"{scen}/{first}", warmup)
            for rep in range(args.repeat):
                for m in balanced_order(peers + extra[scen], rep):
                    if m == "tensorizer" and ck.tensorizer is None:
                        continue
                    before_sample(scen, ck, drop)
                    record(results, scen, m, rep, run_child(m, ck, args.timeout, args.settle))
            if scen == "tmpfs":
                shutil.rmtree(shm, ignore_errors=True)
    finally:
        summarise(results)
        Path(args.out).write_text(json.dumps(results, indent=2))
        if not args.keep:
            shutil.rmtree(disk, ignore_errors=True)
            shutil.rmtree(shm, ignore_errors=True)
    lines = report_lines(results, scenarios, peers, extra)
    print("\n" + "\n".join(lines))
    if args.write:
        from benchkit import write_section

        write_section("loader", "\n".join(lines), "Loader: safetensors into memory (generated)")


def to_tmpfs(ck: Checkpoint, shm: Path) -> Checkpoint:
    """A copy of the checkpoint's files under ``shm``."""
    shm.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in [*ck.paths, *([ck.tensorizer] if ck.tensorizer else [])]:
        shutil.copy(p, shm / Path(p).name)
        paths.append(str(shm / Path(p).name))
    tfile = paths.pop() if ck.tensorizer else None
    return Checkpoint(paths, tfile, ck.device)


def record(results: dict[str, Any], scen: str, m: str, rep: int, r: dict[str, Any]) -> None:
    key = f"{scen}/{m}"
    entry = results["runs"].setdefault(key, {"samples": [], "errors": []})
    if "error" in r:
        entry["errors"].append(r["error"])
        log.info("%-30s rep %d: error %s", key, rep, r["error"])
        return
    r["gbps"] = r["bytes"] / r["seconds"] / 1e9
    entry["samples"].append(r)
    log.info(
        "%-30s rep %d: %5.2f GB/s, +%.2f GiB RSS peak, %d minflt, user %.1f s sys %.1f s, "
        "%d threads",
        key,
        rep,
        r["gbps"],
        (r["peak_rss_kib"] - r["rss_before_kib"]) / 2**20,
        r["minflt"],
        r["user_s"],
        r["sys_s"],
        r["threads"],
    )


if __name__ == "__main__":
    main()
