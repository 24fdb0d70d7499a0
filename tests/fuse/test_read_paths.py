"""Bytes read through the mount equal the cold bytes, by every access path."""

from __future__ import annotations

import errno
import mmap
import os
import random
import stat
import threading
import time
from pathlib import Path

import pytest
import xxhash

from tests.fuse.mounting import Mount, MountFactory, file_hash, xxh

SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "page-minus.bin": 4095,
    "page.bin": 4096,
    "page-plus.bin": 4097,
    "odd.bin": 3 * 1024 * 1024 + 7,
    "multi.bin": 21 * 1024 * 1024 + 513,
}
SPARSE_NAME = "sparse.bin"
SPARSE_SIZE = (4 << 30) + 12345
# Islands of data in the sparse file, so its hash covers more than zeros.
SPARSE_ISLANDS = (0, 1 << 20, (1 << 32) - 4096, 1 << 32, SPARSE_SIZE - 5000)


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Hash, mtime and mode of everything in a tree (symlinks by target)."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            digest = file_hash(path)
        elif stat.S_ISLNK(st.st_mode):
            digest = os.readlink(path)
        else:
            digest = "dir"
        result[str(path.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return result


@pytest.fixture(scope="module")
def cold_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readpaths") / "cold"
    (root / "models" / "deep").mkdir(parents=True)
    rng = random.Random(1234)
    for name, size in SIZES.items():
        (root / "models" / name).write_bytes(rng.randbytes(size))
    with open(root / "models" / SPARSE_NAME, "wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset in SPARSE_ISLANDS:
            f.seek(offset)
            f.write(rng.randbytes(4096 if offset + 4096 <= SPARSE_SIZE else 5000))
    (root / "models" / "deep" / "x.bin").write_bytes(rng.randbytes(10_000))
    os.symlink("../odd.bin", root / "models" / "deep" / "link-to-odd")
    os.symlink("/etc/hostname", root / "models" / "outside-link")
    return root


@pytest.fixture(scope="module")
def cold_hashes(cold_files: Path) -> dict[str, str]:
    return {name: file_hash(cold_files / "models" / name) for name in [*SIZES, SPARSE_NAME]}


@pytest.fixture
def mounted(mount_factory: MountFactory, cold_files: Path) -> Mount:
    return mount_factory([("disk", cold_files)])


@pytest.mark.parametrize("name", list(SIZES))
def test_whole_file_read_matches_cold(
    mounted: Mount, cold_hashes: dict[str, str], name: str
) -> None:
    path = mounted.mountpoint / "models" / name
    assert path.stat().st_size == SIZES[name]
    assert file_hash(path) == cold_hashes[name]
    # Again, now largely from the page cache kept across opens.
    assert file_hash(path, chunk=123_457) == cold_hashes[name]


def test_reads_of_any_size_and_offset_match_cold(mounted: Mount, cold_files: Path) -> None:
    rng = random.Random(7)
    for name, size in SIZES.items():
        cold = (cold_files / "models" / name).read_bytes()
        fd = os.open(mounted.mountpoint / "models" / name, os.O_RDONLY)
        try:
            cases = [(0, 0), (0, 1), (size, 10), (size + 100, 10), (max(size - 1, 0), 5)]
            cases += [
                (rng.randrange(size + 1), rng.choice([1, 511, 4096, 70_000, 1 << 20]))
                for _ in range(40)
            ]
            for offset, length in cases:
                assert os.pread(fd, length, offset) == cold[offset : offset + length], (
                    name,
                    offset,
                    length,
                )
        finally:
            os.close(fd)


@pytest.mark.parametrize("flags", [mmap.MAP_SHARED, mmap.MAP_PRIVATE], ids=["shared", "private"])
def test_mmap_matches_cold(mounted: Mount, cold_hashes: dict[str, str], flags: int) -> None:
    for name, size in SIZES.items():
        if size == 0:
            continue  # mmap of an empty file is refused, as on any file system
        path = mounted.mountpoint / "models" / name
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as m:
            m.madvise(mmap.MADV_WILLNEED)
            assert xxh(memoryview(m)) == cold_hashes[name], name
            # Random access into the mapping, as a loader touching tensors does.
            rng = random.Random(size)
            cold = path.read_bytes()
            for _ in range(20):
                offset = rng.randrange(size)
                assert m[offset : offset + 300] == cold[offset : offset + 300]


def test_o_direct_reader_gets_cold_bytes(mounted: Mount, cold_files: Path) -> None:
    name = "multi.bin"
    size = SIZES[name]
    cold = (cold_files / "models" / name).read_bytes()
    fd = os.open(mounted.mountpoint / "models" / name, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 1 << 20)  # page aligned, as O_DIRECT wants
        got = bytearray()
        offset = 0
        while offset < size:
            n = os.preadv(fd, [buf], offset)
            assert n > 0
            got += buf[:n]
            offset += n
        assert xxh(bytes(got)) == xxh(cold)
    finally:
        os.close(fd)


def test_many_readers_on_one_and_many_files(mounted: Mount, cold_files: Path) -> None:
    names = ["odd.bin", "multi.bin", "page-plus.bin"]
    cold = {n: (cold_files / "models" / n).read_bytes() for n in names}
    failures: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            name = rng.choice(names)
            data = cold[name]
            offset = rng.randrange(len(data))
            length = rng.choice([4096, 65536, 1 << 20, 3 << 20])
            with open(mounted.mountpoint / "models" / name, "rb", buffering=0) as f:
                f.seek(offset)
                if f.read(length) != data[offset : offset + length]:
                    failures.append(f"{name}@{offset}+{length}")
        with open(mounted.mountpoint / "models" / "multi.bin", "rb") as f:
            if xxh(f.read()) != xxh(cold["multi.bin"]):
                failures.append("multi.bin whole")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


@pytest.mark.slow
def test_sparse_file_over_4gib_reads_correctly(
    mounted: Mount, cold_files: Path, cold_hashes: dict[str, str]
) -> None:
    path = mounted.mountpoint / "models" / SPARSE_NAME
    assert path.stat().st_size == SPARSE_SIZE
    cold_path = cold_files / "models" / SPARSE_NAME
    with open(path, "rb") as f, open(cold_path, "rb") as c:
        for offset in SPARSE_ISLANDS:
            f.seek(offset - 100 if offset >= 100 else 0)
            c.seek(offset - 100 if offset >= 100 else 0)
            assert f.read(9000) == c.read(9000), offset
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        tail = SPARSE_SIZE - 5000
        with open(cold_path, "rb") as c:
            c.seek(tail - 4096)
            assert m[tail - 4096 :] == c.read()
    assert file_hash(path) == cold_hashes[SPARSE_NAME]


def test_file_xattrs_name_the_cold_store_and_backing(mounted: Mount, cold_files: Path) -> None:
    path = mounted.mountpoint / "models" / "odd.bin"
    assert os.getxattr(path, "user.tierfs.tier") == b"disk"
    assert os.getxattr(path, "user.tierfs.backing") == os.fsencode(
        cold_files / "models" / "odd.bin"
    )
    names = set(os.listxattr(path))
    assert {"user.tierfs.tier", "user.tierfs.backing"} <= names
    with pytest.raises(OSError) as unknown:
        os.getxattr(path, "user.tierfs.nonsense")
    assert unknown.value.errno == errno.ENODATA
    # The hash is not known before anything computed it.
    with pytest.raises(OSError) as no_hash:
        os.getxattr(path, "user.tierfs.xxh3")
    assert no_hash.value.errno == errno.ENODATA
    with pytest.raises(OSError) as on_dir:
        os.getxattr(mounted.mountpoint / "models", "user.tierfs.tier")
    assert on_dir.value.errno == errno.ENODATA


def test_symlinks_are_presented_as_they_are(mounted: Mount, cold_hashes: dict[str, str]) -> None:
    deep = mounted.mountpoint / "models" / "deep"
    assert os.readlink(deep / "link-to-odd") == "../odd.bin"
    # A relative link resolves through the mount, to the mount's own file.
    assert file_hash(deep / "link-to-odd") == cold_hashes["odd.bin"]
    assert os.path.realpath(deep / "link-to-odd") == str(mounted.mountpoint / "models" / "odd.bin")
    # A link out of the mount is shown verbatim, not followed or rewritten by tierfs.
    assert os.readlink(mounted.mountpoint / "models" / "outside-link") == "/etc/hostname"


def test_presented_attributes_are_the_cold_ones(mounted: Mount, cold_files: Path) -> None:
    for name in [*SIZES, SPARSE_NAME, "deep"]:
        cold = os.lstat(cold_files / "models" / name)
        seen = os.lstat(mounted.mountpoint / "models" / name)
        assert seen.st_size == cold.st_size
        assert seen.st_mtime_ns == cold.st_mtime_ns
        # Write bits are masked: the mount is read-only.
        assert stat.S_IMODE(seen.st_mode) == stat.S_IMODE(cold.st_mode) & ~0o222
        assert stat.S_IFMT(seen.st_mode) == stat.S_IFMT(cold.st_mode)


def test_every_write_fails_with_erofs_and_cold_is_unchanged(
    mounted: Mount, cold_files: Path
) -> None:
    before = snapshot(cold_files)
    m = mounted.mountpoint / "models"
    attempts = {
        "open for write": lambda: os.open(m / "odd.bin", os.O_WRONLY),
        "open rdwr": lambda: os.open(m / "odd.bin", os.O_RDWR),
        "truncate": lambda: os.truncate(m / "odd.bin", 0),
        "create": lambda: os.open(m / "new.bin", os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(m / "newdir"),
        "rmdir": lambda: os.rmdir(m / "deep"),
        "unlink": lambda: os.unlink(m / "odd.bin"),
        "rename": lambda: os.rename(m / "odd.bin", m / "renamed.bin"),
        "symlink": lambda: os.symlink("odd.bin", m / "newlink"),
        "link": lambda: os.link(m / "odd.bin", m / "hardlink"),
        "chmod": lambda: os.chmod(m / "odd.bin", 0o777),
        "chown": lambda: os.chown(m / "odd.bin", 1, 1),
        "utime": lambda: os.utime(m / "odd.bin", (0, 0)),
        "setxattr": lambda: os.setxattr(m / "odd.bin", "user.x", b"1"),
        "removexattr": lambda: os.removexattr(m / "odd.bin", "user.tierfs.tier"),
        "mknod": lambda: os.mkfifo(m / "fifo"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS, what
    # A full read workload leaves the cold store unchanged too.
    for name in SIZES:
        file_hash(m / name)
    assert snapshot(cold_files) == before


def test_statfs_reports_the_cold_stores_size(mounted: Mount, cold_files: Path) -> None:
    seen = os.statvfs(mounted.mountpoint)
    cold = os.statvfs(cold_files)
    assert seen.f_blocks * seen.f_frsize == pytest.approx(cold.f_blocks * cold.f_frsize, rel=1e-6)
    assert seen.f_bavail * seen.f_frsize == pytest.approx(cold.f_bavail * cold.f_frsize, rel=0.01)


@pytest.fixture
def prefetching(mount_factory: MountFactory, cold_files: Path) -> Mount:
    # Prefetch belongs to the daemon-served read path; passthrough reads never reach it.
    return mount_factory(
        [("disk", cold_files)],
        extra="[read]\nprefetch_window = 67108864\n",
        name="pf",
        passthrough="off",
    )


def test_prefetch_is_off_by_default(mounted: Mount, cold_hashes: dict[str, str]) -> None:
    assert file_hash(mounted.mountpoint / "models" / "multi.bin") == cold_hashes["multi.bin"]
    assert mounted.stats()["pushed_bytes"] == 0


def test_sequential_reader_is_served_by_prefetch(
    prefetching: Mount, cold_hashes: dict[str, str]
) -> None:
    mounted = prefetching
    size = SIZES["multi.bin"]
    before = mounted.stats()
    h = xxhash.xxh3_128()
    with open(mounted.mountpoint / "models" / "multi.bin", "rb", buffering=0) as f:
        h.update(f.read(1 << 20))
        # Let the prefetcher run ahead of this reader: wait until its pushes settle (the
        # window covers the whole file), however slow the machine is right now.
        deadline = time.monotonic() + 30
        pushed = -1
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = mounted.stats()["pushed_bytes"] - before["pushed_bytes"]
            if now == pushed:
                break
            pushed = now
        middle = mounted.stats()
        while block := f.read(1 << 20):
            h.update(block)
    after = mounted.stats()
    assert h.hexdigest() == cold_hashes["multi.bin"]
    # The file went into the page cache ahead of the reader...
    assert middle["pushed_bytes"] - before["pushed_bytes"] >= size - (2 << 20)
    # ...so the rest of it was answered by the kernel without asking the daemon.
    assert after["read_bytes"] - middle["read_bytes"] < size // 8
