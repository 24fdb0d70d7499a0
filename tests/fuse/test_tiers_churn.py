"""Readers never see a wrong byte while models are promoted, demoted, pinned and evicted.

Four reader threads read whole files and random ranges of five models through the mount
(some through handles held open across moves, some after dropping the page cache) and
compare every byte with the cold content, while a fifth thread drives the mover through
the control API on a tier too small for all of them, so that promotions evict.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.crashutil import (
    HF_MODEL,
    MiB,
    TierDirs,
    assert_catalog_consistent,
    assert_fsck_clean,
    assert_serves_cold_bytes,
    build_hf_model,
    control,
    manual_tier_toml,
)
from tests.fuse.mounting import MountFactory
from tests.fuse.tierutil import write_random
from tierfs.errors import ControlError
from tierfs.states import JobState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHURN_S = float(os.environ.get("TIERFS_CHURN_S", "45"))
READERS = 4
LONE_SIZES = (2 * MiB + 11, 3 * MiB - 5, 5 * MiB + 4097, 6 * MiB - 1)
LONE = [f"lone/m{i}.gguf" for i in range(len(LONE_SIZES))]
MODELS = [*LONE, HF_MODEL]


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[TierDirs]:
    dirs = TierDirs(tmp_path)
    yield dirs
    dirs.cleanup()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


def _reader(
    seed: int,
    mountpoint: Path,
    cold: dict[str, bytes],
    stop: threading.Event,
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    names = sorted(cold)
    while not stop.is_set():
        relpath = rng.choice(names)
        expected = cold[relpath]
        try:
            with open(mountpoint / relpath, "rb", buffering=0) as f:
                fd = f.fileno()
                if rng.random() < 0.3:
                    # Make the daemon serve these reads, not the kernel's cache.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    tally.add("cache_drops")
                if rng.random() < 0.3:
                    data = f.read()
                    tally.add("whole_reads")
                    if data != expected:
                        tally.fail(f"{relpath}: whole read of {len(data)} bytes differs")
                    continue
                # Random ranges through one handle held open while the mover works.
                for _ in range(rng.randint(5, 40)):
                    if stop.is_set():
                        break
                    offset = rng.randrange(0, max(len(expected), 1))
                    length = rng.choice((1, 4095, 4096, 65536, 1 << 20, rng.randint(1, 3 * MiB)))
                    data = os.pread(fd, length, offset)
                    tally.add("range_reads")
                    if data != expected[offset : offset + length]:
                        tally.fail(f"{relpath}: {length} bytes at {offset} differ")
                    if rng.random() < 0.2:
                        time.sleep(rng.random() * 0.05)
        except OSError as exc:
            tally.fail(f"{relpath}: {exc!r}")
            tally.add("read_errors")


def _mover(config_mount: object, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    pinned: set[str] = set()
    with control(config_mount) as client:  # type: ignore[arg-type]
        while not stop.is_set():
            model = rng.choice(MODELS)
            op = rng.choices(["promote", "demote", "pin", "unpin"], weights=[5, 3, 1, 2])[0]
            if op == "pin" and len(pinned) >= 1:
                op = "unpin"
                model = next(iter(pinned))
            try:
                if op == "promote":
                    job = client.promote(model, None)
                    if rng.random() < 0.5:  # sometimes wait, sometimes demote mid-copy
                        deadline = time.monotonic() + 20
                        while JobState(job["state"]).active:
                            if time.monotonic() > deadline:
                                tally.fail(f"promotion of {model} hangs: {job}")
                                break
                            time.sleep(0.02)
                            job = client.job(job["id"])
                elif op == "demote":
                    client.demote(model)
                elif op == "pin":
                    client.pin(model, None)
                    pinned.add(model)
                else:
                    client.unpin(model)
                    pinned.discard(model)
                tally.add(op)
            except ControlError as exc:
                if exc.errno == errno.ENOSPC or "does not fit" in str(exc):
                    tally.add("no_room")
                else:
                    tally.fail(f"{op} {model}: {exc}")
            time.sleep(rng.random() * 0.1)
        for model in pinned:
            client.unpin(model)


def test_reads_stay_right_while_models_churn(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = build_hf_model(cold_store)
    for i, (relpath, size) in enumerate(zip(LONE, LONE_SIZES, strict=True)):
        hashes[relpath] = write_random(cold_store / relpath, size, seed=100 + i)
    cold = {relpath: (cold_store / relpath).read_bytes() for relpath in hashes}
    total = sum(len(b) for b in cold.values())
    tier = tiers.new()
    # About half of everything fits: promotions have to evict.
    tier_size = 12 * MiB
    assert total > 1.5 * tier_size
    mount = mount_factory([("cold", cold_store)], extra=manual_tier_toml(tier, size="12M"))

    stop = threading.Event()
    tally = Tally()
    threads = [
        threading.Thread(target=_reader, args=(i, mount.mountpoint, cold, stop, tally), daemon=True)
        for i in range(READERS)
    ]
    threads.append(threading.Thread(target=_mover, args=(mount, stop, tally, 4242), daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + CHURN_S
    while time.monotonic() < deadline and not tally.failures:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a worker thread hangs"

    counts = tally.counts
    assert not tally.failures, f"{len(tally.failures)} failures: {tally.failures[:10]}"
    assert counts["read_errors"] == 0
    assert counts["whole_reads"] > 20 and counts["range_reads"] > 200, counts

    with control(mount) as client:
        status = client.status()
    jobs = Counter(j["state"] for j in status["jobs"])
    log = mount.log_text()
    evictions = log.count(" to make room for ")
    demotions = log.count("tierfs.storage.mover.core: demoted ")
    print(f"churn: {dict(counts)}; jobs {dict(jobs)}; {evictions} evictions, {demotions} demotions")
    # A job fails only for want of room: evicted copies held open keep their tmpfs pages.
    for job in status["jobs"]:
        if job["state"] == "failed":
            assert "No space left" in job["error"] or "does not fit" in job["error"], job
    assert jobs["done"] >= 5, (jobs, counts)
    assert evictions >= 1, f"no eviction happened: {jobs}, {counts}"
    assert demotions >= 1, (jobs, counts)
    assert "Traceback" not in log

    # Quiet again: everything consistent, right bytes from wherever they come.
    wait_idle(mount)
    assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    replicas = assert_catalog_consistent(mount.state_dir, tier)
    assert sum(r.size for r in replicas) <= tier_size
    assert_fsck_clean(mount.config)
    assert mount.stop() == 0
    assert_fsck_clean(mount.config)


def wait_idle(mount: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with control(mount) as client:  # type: ignore[arg-type]
        while any(JobState(j["state"]).active for j in client.status()["jobs"]):
            assert time.monotonic() < deadline, "promotions still running"
            time.sleep(0.1)
