"""fsck without a mount: real files, a real catalog, a tier directory."""

from __future__ import annotations

from pathlib import Path

from tierfs.catalog import Catalog
from tierfs.config import TierConfig
from tierfs.copier import copy_file
from tierfs.fsck import COLD_GONE, check
from tierfs.tiers import Tier


def make_tier(root: Path) -> Tier:
    config = TierConfig(name="ram0", path=root, size=64 << 20, mount_tmpfs=False)
    for sub in ("hot", ".tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return Tier(config=config, capacity=config.size, fstype="tmpfs")


def hot_copy(catalog: Catalog, tier: Tier, cold_root: Path, relpath: str) -> Path:
    source = cold_root / relpath
    st = source.stat()
    record = catalog.sync_file("cold", relpath, st.st_size, st.st_mtime_ns)
    final = tier.hot_path("cold", relpath)
    assert catalog.begin_copy(record.id, tier.name, str(final), st.st_size)
    result = copy_file(source, tier.temp_path(record.id), final, expected_size=st.st_size)
    assert catalog.finish_copy(record.id, tier.name, result.xxh3, st.st_size, st.st_mtime_ns)
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
