"""``tierfs install``, run for real into a scratch root: the config, the unit, the checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import xxhash

from tierfs.config import load_config, parse_size
from tierfs.ops.install import build_config, check_tier_memory

REPO = Path(__file__).resolve().parents[2]
TIERFS = Path(sys.executable).with_name("tierfs")


def install(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierfs", "install", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=stdin,
        timeout=120,
    )


@pytest.fixture
def cold(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def flags(root: Path, cold: Path, *more: str) -> list[str]:
    return ["--root", str(root), "--cold", f"nfs={cold}", "--tier-size", "2G", *more]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_dry_run_prints_the_config_and_unit_and_changes_nothing(tmp_path: Path, cold: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = install(*flags(root, cold, "--mountpoint", "/srv/mnt", "--dry-run"))
    assert result.returncode == 0, result.stderr
    assert files_under(root) == [] and list(root.iterdir()) == []
    out = result.stdout
    config_at = root / "etc/tierfs/config.toml"
    unit_at = root / "etc/systemd/system/tierfs.service"
    assert f"would write {config_at} (mode 644):" in out
    assert f"would write {unit_at} (mode 644):" in out
    # The config it would write is printed whole: parse it back from the output.
    config_text = out.split(f"{config_at} (mode 644):\n")[1].split("would write")[0]
    data = tomllib.loads(config_text)
    assert data["mountpoint"] == "/srv/mnt"
    assert data["cold"] == [{"name": "nfs", "path": str(cold)}]
    assert data["tier"][0]["size"] == parse_size("2G")
    assert f"ExecStart={TIERFS} mount --foreground --config /etc/tierfs/config.toml" in out
    assert "[Install]\nWantedBy=multi-user.target" in out
    assert "would run:" in out or "systemctl is not installed" in out
    for check in ("fuse", "passthrough", "tier size"):
        assert f"check {check}: " in out


def test_install_writes_config_and_unit_and_enables_it(tmp_path: Path, cold: Path) -> None:
    root = tmp_path / "root"
    result = install(*flags(root, cold))
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_config(root / "etc/tierfs/config.toml")
    assert [(c.name, c.path) for c in config.cold] == [("nfs", cold)]
    assert config.tier[0].size == 2 << 30 and config.mountpoint == Path("/models")
    assert config.allow_other is True
    assert (root / "models").is_dir()
    unit = root / "etc/systemd/system/tierfs.service"
    assert f"ExecStart={TIERFS} mount --foreground" in unit.read_text()
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/tierfs.service"
        assert wants.is_symlink(), result.stdout
        assert os.readlink(wants) == "/etc/systemd/system/tierfs.service"
        assert "enabled for the next boot but not started" in result.stdout


def test_an_existing_config_is_kept_without_force(tmp_path: Path, cold: Path) -> None:
    root = tmp_path / "root"
    assert install(*flags(root, cold)).returncode == 0
    config = root / "etc/tierfs/config.toml"
    config.write_text(config.read_text() + "# the operator's own edit\n")
    before = xxhash.xxh3_128_hexdigest(config.read_bytes())
    mtime = config.stat().st_mtime_ns
    time.sleep(0.01)

    refused = install(*flags(root, cold, "--tier-size", "1G"))
    assert refused.returncode == 2
    assert refused.stderr == f"tierfs: {config}: already exists; pass --force to replace it\n"
    assert xxhash.xxh3_128_hexdigest(config.read_bytes()) == before
    assert config.stat().st_mtime_ns == mtime

    forced = install(*flags(root, cold, "--tier-size", "1G", "--force"))
    assert forced.returncode == 0, forced.stderr
    assert load_config(config).tier[0].size == 1 << 30
    assert "the operator's own edit" not in config.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "tierfs: --cold: give at least one --cold PATH (no terminal to ask on)"),
        (["--cold", "/nonexistent/models"], "cold[0].path: '/nonexistent/models' does not exist"),
        (["--cold", "/tmp", "--tier-size", "lots"], "--tier-size: expected a size like"),
        (["--cold", "/tmp", "--mountpoint", "models"], "mountpoint: 'models' is not an absolute"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = install("--root", str(tmp_path), "--dry-run", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_it_asks_on_a_terminal(tmp_path: Path, cold: Path) -> None:
    controller, terminal = os.openpty()
    try:
        os.write(controller, f"{cold}\n3G\n/srv/weights\n".encode())
        result = install("--root", str(tmp_path), stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 0, result.stdout + result.stderr
    for question in ("Cold stores", "RAM tier size", "Mountpoint"):
        assert question in result.stdout
    config = load_config(tmp_path / "etc/tierfs/config.toml")
    assert [c.path for c in config.cold] == [cold]
    assert config.tier[0].size == 3 << 30 and config.mountpoint == Path("/srv/weights")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path, cold: Path) -> None:
    root = tmp_path / "root"
    assert install(*flags(root, cold)).returncode == 0
    unit = root / "etc/systemd/system/tierfs.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # Unknown or misspelt directives, and a missing ExecStart binary, are reported here.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_tier_size_is_checked_against_memory(cold: Path) -> None:
    def tier(size: str) -> bool | None:
        return check_tier_memory(build_config([str(cold)], tier_size=size), total=8 << 30).ok

    assert tier("2G") is True
    assert tier("7G") is False  # more than three quarters of RAM
    assert tier("16G") is False  # more than the machine has
    assert tier("0") is True  # no tier at all
