#!/usr/bin/env python3
"""Benchmark the loader against its peers on one multi-GiB bf16 checkpoint, into CPU memory
(the default) or into GPU memory (``--device cuda``).

Scenarios: cold from disk (page cache dropped before each run), warm from disk, and from
tmpfs.  Methods: this loader, safetensors ``load_file`` materialised (clone of each tensor),
fastsafetensors (nogds), runai-model-streamer, tensorizer (its own format, converted from the
same tensors outside the timing), and fio's O_DIRECT sequential read as the bound.  Every
measurement runs in a fresh process so freed memory and warm allocators do not leak from one
method into the next.

    python scripts/bench_loader.py --size-gb 4 --shards 2 --repeat 3 --out bench.json

Dropping the page cache needs root and disturbs anyone else measuring on the machine: pass
``--no-drop`` while developing (cold figures are then not cold and are marked so).

With ``--device cuda`` every method loads into ``cuda:0`` and the clock stops after a device
synchronise; InstantTensor (CUDA only) joins the peers, tensorizer drops out, and
fastsafetensors runs with GDS where the file system allows it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_loader")
REPO = Path(__file__).resolve().parent.parent
METHODS = ["loader", "safetensors", "fastsafetensors", "runai", "tensorizer"]
CUDA_METHODS = ["loader", "safetensors", "fastsafetensors", "runai", "instanttensor"]


# --------------------------------------------------------------------------- one measurement
def _load(method: str, paths: list[str], tfile: str | None, device: str = "cpu") -> int:
    """Load everything into ``device`` memory with ``method``; returns the bytes loaded."""
    n = 0
    cuda = device != "cpu"
    if method.startswith("loader"):
        sys.path.insert(0, str(REPO))
        import loader

        backend = method.split(":", 1)[1] if ":" in method else None
        with loader.safe_open(paths, device=device, backend=backend) as f:
            for _name, t in f.tensors():
                n += t.numel() * t.element_size()
    elif method == "safetensors":
        from safetensors.torch import load_file

        keep = []
        for p in paths:
            for _name, t in load_file(p, device=device).items():
                # On CPU load_file's tensors sit on a lazy mapping; clone makes them resident.
                keep.append(t if cuda else t.clone())
        n = sum(t.numel() * t.element_size() for t in keep)
    elif method == "fastsafetensors":
        from fastsafetensors import fastsafe_open

        with fastsafe_open(paths, nogds=not cuda, device=device) as f:
            keep = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        n = sum(t.numel() * t.element_size() for t in keep.values())
    elif method == "runai":
        from runai_model_streamer import SafetensorsStreamer

        keep = {}
        with SafetensorsStreamer() as s:
            s.stream_files(paths, device=device, owned=True)
            for name, t in s.get_tensors():
                keep[name] = t
        n = sum(t.numel() * t.element_size() for t in keep.values())
    elif method == "tensorizer":
        from tensorizer import TensorDeserializer

        assert tfile is not None
        with TensorDeserializer(tfile, device=device) as d:
            keep = dict(d.items())
        n = sum(t.numel() * t.element_size() for t in keep.values())
    elif method == "instanttensor":
        import instanttensor

        keep = {}
        with instanttensor.safe_open(paths, framework="pt", device=device) as f:
            for name, t in f.tensors():
                keep[name] = t
        n = sum(t.numel() * t.element_size() for t in keep.values())
    else:
        raise SystemExit(f"unknown method {method}")
    if cuda:
        import torch

        torch.cuda.synchronize()
    return n


def _preimport(method: str, device: str) -> None:
    """Import everything a method needs before the clock starts."""
    import importlib

    import torch

    sys.path.insert(0, str(REPO))
    mods = {
        "loader": "loader",
        "safetensors": "safetensors.torch",
        "fastsafetensors": "fastsafetensors",
        "runai": "runai_model_streamer",
        "tensorizer": "tensorizer",
        "instanttensor": "instanttensor",
    }
    importlib.import_module(mods[method.split(":")[0]])
    if device != "cpu":
        # The CUDA context belongs to start-up, not to the load.
        torch.empty(1, device=device)
        torch.cuda.synchronize()


def _child(args: argparse.Namespace) -> None:
    _preimport(args.method, args.device)
    t0 = time.perf_counter()
    n = _load(args.method, args.paths, args.tfile, args.device)
    dt = time.perf_counter() - t0
    print(json.dumps({"bytes": n, "seconds": dt}))


# --------------------------------------------------------------------------- orchestration
def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_child(
    method: str, paths: list[str], tfile: str | None, timeout: int, device: str = "cpu"
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_child", method, "--tfile", tfile or "", "--device", device]
    cmd += paths
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def fio_bound(paths: list[str], drop: bool, bs: str = "4M", depth: int = 16) -> float:
    """fio O_DIRECT sequential read (io_uring) over the shards, in GB/s."""
    total_b, total_s = 0, 0.0
    for p in paths:
        if drop:
            drop_caches()
        r = subprocess.run(
            [
                "fio",
                "--name=bound",
                f"--filename={p}",
                "--rw=read",
                f"--bs={bs}",
                "--direct=1",
                "--ioengine=io_uring",
                f"--iodepth={depth}",
                "--output-format=json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        job = json.loads(r.stdout)["jobs"][0]["read"]
        total_b += job["io_bytes"]
        total_s += job["runtime"] / 1000
    return total_b / total_s / 1e9


def direct_ceiling(paths: list[str]) -> float:
    """O_DIRECT reads of every shard into reused, prefaulted huge-page buffers (8 threads,
    16 MiB): what the device delivers when no fresh memory has to be faulted in.

    fio's buffers sit on 4 KiB pages; on a VM, huge-page buffers turn each request into a few
    large DMA segments and can be several times faster, so this is the stricter bound.
    """
    import mmap
    import threading
    from concurrent.futures import ThreadPoolExecutor

    chunk, threads = 16 << 20, 8
    local = threading.local()

    def buf() -> mmap.mmap:
        if not hasattr(local, "b"):
            b = mmap.mmap(-1, chunk, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            b.madvise(mmap.MADV_HUGEPAGE)
            b.madvise(23)  # MADV_POPULATE_WRITE
            local.b = b
        return local.b

    fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in paths]
    jobs = [(fd, off) for fd in fds for off in range(0, os.fstat(fd).st_size, chunk)]

    def read(job: tuple[int, int]) -> int:
        return os.preadv(job[0], [buf()], job[1])

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda fd: buf(), range(threads)))  # buffers ready before the clock
        t0 = time.perf_counter()
        n = sum(ex.map(read, jobs))
        dt = time.perf_counter() - t0
    for fd in fds:
        os.close(fd)
    return n / dt / 1e9


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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        p = argparse.ArgumentParser()
        p.add_argument("method")
        p.add_argument("--tfile", default="")
        p.add_argument("--device", default="cpu")
        p.add_argument("paths", nargs="+")
        a = p.parse_args(sys.argv[2:])
        a.tfile = a.tfile or None
        _child(a)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=4.0)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--disk-dir", default="/var/tmp/loader-bench")
    ap.add_argument("--tmpfs-dir", default="/dev/shm/loader-bench")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    ap.add_argument(
        "--methods",
        default=None,
        help="comma list; 'loader:direct' etc. pin a backend (default: every peer that runs "
        "on the device)",
    )
    ap.add_argument("--scenarios", default="disk-cold,disk-warm,tmpfs")
    ap.add_argument("--no-drop", action="store_true", help="never drop the page cache")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", default="bench-loader.json")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda:0" if args.device == "cuda" else args.device
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: this torch sees no CUDA device")
    methods = (args.methods or ",".join(METHODS if device == "cpu" else CUDA_METHODS)).split(",")
    scenarios = args.scenarios.split(",")
    disk, shm = Path(args.disk_dir), Path(args.tmpfs_dir)
    drop = not args.no_drop

    log.info("generating %.1f GB in %d shards under %s", args.size_gb, args.shards, disk)
    disk_paths = make_checkpoint(disk, args.size_gb, args.shards)
    tdisk = make_tensorizer(disk_paths, disk) if "tensorizer" in methods else None
    shm_paths: list[str] = []
    tshm = None
    if "tmpfs" in scenarios:
        shm.mkdir(parents=True, exist_ok=True)
        for p in disk_paths:
            shutil.copy(p, shm / Path(p).name)
            shm_paths.append(str(shm / Path(p).name))
        if tdisk:
            tshm = str(shm / "model.tensors")
            shutil.copy(tdisk, tshm)
    total = sum(os.path.getsize(p) for p in disk_paths)

    results: dict[str, Any] = {
        "machine": machine(),
        "bytes": total,
        "files": len(disk_paths),
        "cold_dropped": drop,
        "device": device,
        "runs": {},
    }
    if device != "cpu":
        results["machine"]["gpu"] = torch.cuda.get_device_name(device)
        results["machine"]["torch"] = torch.__version__
    ceilings = []
    for _ in range(args.repeat):
        if drop:
            drop_caches()
        ceilings.append(direct_ceiling(disk_paths))
    ceiling = statistics.median(ceilings)
    results["odirect_thp_ceiling_gbps"] = ceiling
    log.info("O_DIRECT into reused huge-page buffers: %.2f GB/s", ceiling)
    if shutil.which("fio"):
        log.info("fio bound...")
        # The reference configuration (4 MiB, qd16) and a deeper one (16 MiB, qd16, the
        # loader's request size); the bound is the faster, so ratios are never flattered.
        fio_ref = statistics.median(fio_bound(disk_paths, drop) for _ in range(args.repeat))
        fio_deep = statistics.median(
            fio_bound(disk_paths, drop, "16M", 16) for _ in range(args.repeat)
        )
        bound = max(fio_ref, fio_deep)
        results["fio_4m_qd16_gbps"] = fio_ref
        results["fio_16m_qd16_gbps"] = fio_deep
        log.info("fio O_DIRECT: 4M qd16 %.2f GB/s, 16M qd16 %.2f GB/s", fio_ref, fio_deep)
    else:
        # GPU images often lack fio: the in-process O_DIRECT ceiling is then the bound.
        log.info("fio is not installed: the O_DIRECT ceiling is the bound")
        bound = ceiling
    results["fio_bound_gbps"] = bound
    if device == "cpu":
        results["runs"]["instanttensor"] = {"note": "not runnable on CPU: CUDA-only"}

    for rep in range(args.repeat):
        for scen in scenarios:
            for m in methods:
                paths = shm_paths if scen == "tmpfs" else disk_paths
                tfile = tshm if scen == "tmpfs" else tdisk
                if m == "tensorizer" and tfile is None:
                    continue
                if scen == "disk-cold" and drop:
                    drop_caches()
                elif scen == "disk-warm":
                    run_child(m, paths, tfile, args.timeout, device)  # warm-up, not recorded
                r = run_child(m, paths, tfile, args.timeout, device)
                key = f"{scen}/{m}"
                entry = results["runs"].setdefault(key, {"gbps": [], "errors": []})
                if "error" in r:
                    entry["errors"].append(r["error"])
                    log.info("%-28s rep %d: error %s", key, rep, r["error"])
                    continue
                gbps = r["bytes"] / r["seconds"] / 1e9
                entry["gbps"].append(gbps)
                log.info("%-28s rep %d: %.2f GB/s", key, rep, gbps)

    for entry in results["runs"].values():
        if entry.get("gbps"):
            entry["median_gbps"] = statistics.median(entry["gbps"])
            entry["ratio_to_bound"] = entry["median_gbps"] / bound
            entry["ratio_to_ceiling"] = entry["median_gbps"] / ceiling
    Path(args.out).write_text(json.dumps(results, indent=2))
    print_table(results, scenarios, methods)
    if not args.keep:
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


def print_table(results: dict[str, Any], scenarios: list[str], methods: list[str]) -> None:
    m = results["machine"]
    gpu = f"; into {m['gpu']} (torch {m['torch']})" if "gpu" in m else "; into CPU memory"
    print(
        f"\n{m['date']}; {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, "
        f"Linux {m['kernel']}; {results['bytes'] / 1e9:.2f} GB in {results['files']} files" + gpu
    )
    cold = "" if results["cold_dropped"] else "  (page cache NOT dropped: cold is not cold)"
    if "fio_4m_qd16_gbps" in results:
        print(
            f"fio O_DIRECT bound: {results['fio_bound_gbps']:.2f} GB/s (4M qd16 "
            f"{results['fio_4m_qd16_gbps']:.2f}, 16M qd16 {results['fio_16m_qd16_gbps']:.2f})"
            + cold
        )
    else:
        print("no fio on this machine: the bound is the O_DIRECT ceiling below" + cold)
    print(
        f"O_DIRECT ceiling (reused huge-page buffers, 8 x 16 MiB): "
        f"{results['odirect_thp_ceiling_gbps']:.2f} GB/s; cells: GB/s (vs fio bound, "
        "vs ceiling)"
    )
    print("\n| method | " + " | ".join(scenarios) + " |")
    print("|---|" + "---|" * len(scenarios))
    for meth in methods:
        cells = []
        for scen in scenarios:
            e = results["runs"].get(f"{scen}/{meth}", {})
            if "median_gbps" in e:
                cells.append(
                    f"{e['median_gbps']:.2f} ({e['ratio_to_bound']:.0%}, "
                    f"{e['ratio_to_ceiling']:.0%})"
                )
            else:
                cells.append("error" if e.get("errors") else "-")
        print(f"| {meth} | " + " | ".join(cells) + " |")
    if "instanttensor" not in methods:
        cells = ["not runnable (CUDA-only)"] * len(scenarios)
        print("| instanttensor | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
