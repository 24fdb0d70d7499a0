"""fsck without a mount: real files, a real catalog, a tier directory."""

from __future__ import annotations

from pathlib import Path

from tierfs.config import TierConfig
from tierfs.namespace.identity import FileIdentity
from tierfs.ops.fsck import COLD_GONE, check
from tierfs.storage.catalog import Catalog
from tierfs.storage.copier import copy_file
from tierfs.storage.tiers import Tier


def make_tier(root: Path) -> Tier:
    config = TierConfig(name="ram0", path=root, size=64 << 20, mount_tmpfs=False)
    for sub in ("hot", ".tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return Tier(config=config, capacity=config.size, fstype="tmpfs")


def hot_copy(catalog: Catalog, tier: Tier, cold_root: Path, relpath: str) -> Path:
    source = cold_root / relpath
    st = source.stat()
    record = catalog.sync_file("cold", relpath, FileIdentity.of(st))
    final = tier.hot_path("cold", relpath)
    assert catalog.begin_copy(record.id, tier.name, str(final), st.st_size)
    result = copy_file(source, tier.temp_path(record.id), final, expected_size=st.st_size)
    assert catalog.finish_copy(record.id, tier.name, result.xxh3, FileIdentity.of(st))
    return final


def test_a_hot_copy_whose_cold_file_is_gone_is_removed_and_forgotten(tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    (cold / "m").mkdir(parents=True)
    (cold / "m" / "gone.safetensors").write_bytes(b"g" * 10_000)
    (cold / "m" / "kept.safetensors").write_bytes(b"k" * 10_000)
    tier = make_tier(tmp_path / "tier")
    with Catalog(tmp_path / "state" / "catalog.sqlite") as catalog:
        gone = hot_copy(catalog, tier, cold, "m/gone.safetensors")
        kept = hot_copy(catalog, tier, cold, "m/kept.safetensors")
        (cold / "m" / "gone.safetensors").unlink()

        report = check(catalog, [tier], {"cold": cold})

        assert [(f.problem, f.path) for f in report.findings] == [(COLD_GONE, str(gone))]
        assert not gone.exists()
        assert catalog.file_by_path("cold", "m/gone.safetensors") is None
        assert kept.read_bytes() == b"k" * 10_000
        assert [r.path for r in catalog.replicas()] == [str(kept)]
        assert check(catalog, [tier], {"cold": cold}).clean


def test_deep_fsck_checks_hot_copies_against_the_cold_file_as_it_is_now(tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    (cold / "m").mkdir(parents=True)
    source = cold / "m" / "w.safetensors"
    source.write_bytes(b"old!" * 4096)
    tier = make_tier(tmp_path / "tier")
    with Catalog(tmp_path / "state" / "catalog.sqlite") as catalog:
        hot = hot_copy(catalog, tier, cold, "m/w.safetensors")
        # New bytes under an identity that cannot tell (a file system with coarse times, or
        # a clock set back): the catalog is made to record the file's identity as it is now.
        source.write_bytes(b"new!" * 4096)
        record = catalog.file_by_path("cold", "m/w.safetensors")
        assert record is not None
        catalog._db.execute(
            "UPDATE files SET ctime_ns = ?, mtime_ns = ? WHERE id = ?",
            (source.stat().st_ctime_ns, source.stat().st_mtime_ns, record.id),
        )
        assert check(catalog, [tier], {"cold": cold}).clean  # a shallow check cannot see it

        report = check(catalog, [tier], {"cold": cold}, deep=True)

        assert [f.path for f in report.findings] == [str(hot)]
        assert "stale or corrupt" in report.findings[0].problem
        assert hot.read_bytes() == b"new!" * 4096
        assert check(catalog, [tier], {"cold": cold}, deep=True).clean
