"""The ``tierfs`` CLI in subprocesses, without a mount: config errors, config check and show,
and output that goes to a pipe. ``status`` is in test_cli_status.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.integration import cliutil
from tests.integration.cliutil import (
    REPO_ROOT,
    base_config,
    cold_table,
    tierfs_cli,
    toml_str,
)

pytestmark = pytest.mark.timeout(120)
cold = cliutil.cold


# -- bad configs ------------------------------------------------------------------------------

# id -> (config body after the top-level keys, key named in the message, words of the problem).
# "{cold}" is the good cold store, "{tmp}" the test's directory.
BAD_CONFIGS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "unknown-top-level-key": ("bogus = 1\n{cold_table}", "bogus", ("unknown key",)),
    "unknown-key-in-cold": (
        '[[cold]]\nname = "main"\npath = "{cold}"\ncolour = "red"\n',
        "cold[0].colour",
        ("unknown key",),
    ),
    "allow-other-string": ('allow_other = "yes"\n{cold_table}', "allow_other", ("bool",)),
    "default-permissions-int": (
        "default_permissions = 1\n{cold_table}",
        "default_permissions",
        ("bool",),
    ),
    "io-threads-string": ('{cold_table}[read]\nio_threads = "8"\n', "read.io_threads", ("int",)),
    "log-level-unknown": ('log_level = "loud"\n{cold_table}', "log_level", ("'debug'", "'error'")),
    "passthrough-unknown": (
        '{cold_table}[read]\npassthrough = "yes"\n',
        "read.passthrough",
        ("'auto'", "'off'", "'require'"),
    ),
    "size-bool": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "{tmp}/ram0"\nsize = true\n',
        "tier[0].size",
        ("expected a size", "True"),
    ),
    "size-potatoes": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "{tmp}/ram0"\nsize = "12 potatoes"\n',
        "tier[0].size",
        ("expected a size", "12 potatoes"),
    ),
    "size-99999999E": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "{tmp}/ram0"\nsize = "99999999E"\n',
        "tier[0].size",
        ("too large",),
    ),
    "size-of-300-digits": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "{tmp}/ram0"\nsize = "' + "9" * 300 + '"\n',
        "tier[0].size",
        ("too large",),
    ),
    "tier-larger-than-ram": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "{tmp}/ram0"\nsize = "4E"\n',
        "tier[0]",
        ("exceeds this machine's RAM",),
    ),
    "nested-tiers": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "{tmp}/ram0"\nsize = "1M"\n'
        '[[tier]]\nname = "sub"\npath = "{tmp}/ram0/sub"\nsize = "1M"\n',
        None,
        ("tier 'ram0'", "overlaps tier 'sub'"),
    ),
    "allow-other-without-default-permissions": (
        "allow_other = true\ndefault_permissions = false\n{cold_table}",
        None,
        ("default_permissions",),
    ),
    "deeply-nested": ("x = " + "[" * 50_000 + "]" * 50_000 + "\n{cold_table}", None, ("nested",)),
    "cold-path-missing": (
        '[[cold]]\nname = "main"\npath = "{tmp}/nope"\n',
        "cold[0].path",
        ("nope", "does not exist"),
    ),
    "cold-path-not-a-directory": (
        '[[cold]]\nname = "main"\npath = "{tmp}/a-file"\n',
        "cold[0].path",
        ("a-file", "is not a directory"),
    ),
    "cold-path-relative": (
        '[[cold]]\nname = "main"\npath = "relative/dir"\n',
        "cold[0].path",
        ("relative/dir", "not an absolute path"),
    ),
    "tier-path-relative": (
        '{cold_table}[[tier]]\nname = "ram0"\npath = "ram0"\nsize = "1G"\n',
        "tier[0].path",
        ("not an absolute path",),
    ),
    "duplicate-cold-names": (
        '{cold_table}[[cold]]\nname = "main"\npath = "{tmp}"\n',
        None,
        ("[[cold]]", "name", "'main'"),
    ),
    "watermarks-inverted": (
        "{cold_table}[policy]\nlow_watermark = 0.9\nhigh_watermark = 0.5\n",
        "policy",
        ("low_watermark", "high_watermark", "must not exceed"),
    ),
    "prefetch-chunk-not-page-multiple": (
        "{cold_table}[read]\nprefetch_chunk = 5000\n",
        "read.prefetch_chunk",
        ("5000", "multiple of 4096"),
    ),
    "invalid-toml": ("mountpoint = [1\n{cold_table}", None, ("invalid TOML", "line")),
    "no-cold-store": ("", "cold", ("required key is missing",)),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_line_naming_file_key_and_problem(
    tmp_path: Path, cold: Path, case: str
) -> None:
    body, key, words = BAD_CONFIGS[case]
    (tmp_path / "a-file").write_text("not a directory\n")
    config = tmp_path / "tierfs.toml"
    top = "" if case == "invalid-toml" else base_config(tmp_path, cold)
    config.write_text(top + body.format(cold_table=cold_table(cold), cold=cold, tmp=tmp_path))
    for command in (["config", "check"], ["config", "show"], ["status"]):
        proc = tierfs_cli(*command, "-c", str(config))
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout == "", proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        line = lines[0]
        prefix = f"tierfs: {config}: "
        assert line.startswith(prefix), line
        if key is not None:
            assert line.startswith(f"{prefix}{key}: "), line
        for word in words:
            assert word in line, f"{word!r} not in {line!r}"


@pytest.mark.parametrize("where", ["a-file", "cold/state", "mnt/state"])
def test_a_state_dir_that_is_a_file_or_inside_the_cold_store_or_mount_exits_2(
    tmp_path: Path, cold: Path, where: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    config = tmp_path / "tierfs.toml"
    config.write_text(
        f"mountpoint = {toml_str(tmp_path / 'mnt')}\n"
        f"state_dir = {toml_str(tmp_path / where)}\n{cold_table(cold)}"
    )
    proc = tierfs_cli("config", "check", "-c", str(config))
    assert proc.returncode == 2, proc.stdout
    [line] = proc.stderr.strip().splitlines()
    expected = {"a-file": "not a directory", "cold/state": "inside cold store 'main'"}
    assert expected.get(where, "inside mountpoint") in line, line
    assert not (cold / "state").exists()


def test_a_directory_given_as_config_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = tierfs_cli("config", "check", "-c", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"tierfs: {tmp_path}: cannot read: Is a directory"]


def test_missing_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tierfs.toml"
    proc = tierfs_cli("config", "check", "-c", str(missing))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"tierfs: {missing}: no such file"]


def test_config_from_environment_variable_is_used(tmp_path: Path, cold: Path) -> None:
    config = tmp_path / "env.toml"
    config.write_text(base_config(tmp_path, cold) + "bogus = 1\n" + cold_table(cold))
    env = {**os.environ, "TIERFS_CONFIG": str(config), "COLUMNS": "500"}
    proc = subprocess.run(
        [sys.executable, "-m", "tierfs", "config", "check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"tierfs: {config}: bogus: unknown key"


# -- good configs -----------------------------------------------------------------------------


def full_config(tmp_path: Path, cold: Path) -> str:
    other = tmp_path / "cold2"
    other.mkdir(exist_ok=True)
    return (
        base_config(tmp_path, cold)
        + 'log_level = "warning"\nallow_other = true\ndefault_permissions = true\n'
        + cold_table(cold)
        + cold_table(other, "second")
        + f'[[tier]]\nname = "ram0"\npath = {toml_str(tmp_path / "ram0")}\nsize = "2G"\n'
        + 'rank = 0\nkind = "ram"\nmount_tmpfs = false\n'
        + f'[[tier]]\nname = "peer"\npath = {toml_str(tmp_path / "peer")}\nsize = "512MiB"\n'
        + 'rank = 1\nkind = "remote"\n'
        + '[policy]\npromote_on_open = false\nmin_size = "1M"\ncooldown_s = 10\n'
        + "high_watermark = 0.9\nlow_watermark = 0.8\nmax_parallel_copies = 4\n"
        + '[read]\nreadahead = "8M"\nprefetch_window = "32M"\nprefetch_chunk = "1M"\n'
        + 'io_threads = 4\npassthrough = "off"\n'
    )


def test_config_check_accepts_good_config(tmp_path: Path, cold: Path) -> None:
    config = tmp_path / "tierfs.toml"
    config.write_text(full_config(tmp_path, cold))
    proc = tierfs_cli("config", "check", "-c", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "config OK: 2 cold store(s), 2 tier(s)" in proc.stdout


def test_config_show_prints_toml_that_round_trips_through_check(tmp_path: Path, cold: Path) -> None:
    config = tmp_path / "tierfs.toml"
    config.write_text(full_config(tmp_path, cold))
    shown = tierfs_cli("config", "show", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    data = tomllib.loads(shown.stdout)
    # The effective values, units resolved, defaults included.
    assert data["mountpoint"] == str(tmp_path / "mnt")
    assert data["allow_other"] is True and data["default_permissions"] is True
    assert [c["name"] for c in data["cold"]] == ["main", "second"]
    assert data["cold"][0]["path"] == str(cold)
    assert data["tier"][0]["size"] == 2 << 30 and data["tier"][1]["size"] == 512 << 20
    assert data["tier"][1]["kind"] == "remote" and data["tier"][1]["mount_tmpfs"] is True
    assert data["policy"]["min_size"] == 1 << 20
    assert data["read"] == {
        "readahead": 8 << 20,
        "prefetch_window": 32 << 20,
        "prefetch_chunk": 1 << 20,
        "io_threads": 4,
        "passthrough": "off",
    }

    again = tmp_path / "shown.toml"
    again.write_text(shown.stdout)
    check = tierfs_cli("config", "check", "-c", str(again))
    assert check.returncode == 0, check.stderr
    reshown = tierfs_cli("config", "show", "-c", str(again))
    assert reshown.returncode == 0, reshown.stderr
    assert tomllib.loads(reshown.stdout) == data


def test_config_show_of_minimal_config_includes_defaults(tmp_path: Path, cold: Path) -> None:
    config = tmp_path / "tierfs.toml"
    config.write_text(cold_table(cold))
    shown = tierfs_cli("config", "show", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    data = tomllib.loads(shown.stdout)
    assert data["mountpoint"] == "/models"
    assert data["log_level"] == "info"
    assert data["default_permissions"] is True
    assert data["read"]["readahead"] == 16 << 20
    assert data.get("tier", []) == []


# -- output that goes to a pipe ---------------------------------------------------------------


def long_dir(tmp_path: Path) -> Path:
    deep = tmp_path / "a-directory-with-a-rather-long-name" / "and-another-one-below-it"
    deep.mkdir(parents=True)
    return deep


def test_config_error_is_one_line_even_when_output_is_piped(tmp_path: Path) -> None:
    """Without a terminal, nothing may wrap the one-line error (80 columns is the default)."""
    deep = long_dir(tmp_path)
    cold = deep / "cold-store"
    cold.mkdir()
    config = deep / "tierfs.toml"
    config.write_text(f"bogus = 1\n{cold_table(cold)}")
    proc = tierfs_cli("config", "check", "-c", str(config), columns=None)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"tierfs: {config}: bogus: unknown key"]


def test_config_show_with_long_paths_round_trips_when_output_is_piped(tmp_path: Path) -> None:
    """``tierfs config show > file`` must give valid TOML whatever the length of the paths."""
    deep = long_dir(tmp_path)
    cold = deep / "cold-store-with-a-long-name-too"
    cold.mkdir()
    config = deep / "tierfs.toml"
    config.write_text(
        f"mountpoint = {toml_str(deep / 'mnt')}\nstate_dir = {toml_str(deep / 'state')}\n"
        + cold_table(cold)
    )
    shown = tierfs_cli("config", "show", "-c", str(config), columns=None)
    assert shown.returncode == 0, shown.stderr
    data = tomllib.loads(shown.stdout)
    assert data["cold"][0]["path"] == str(cold)
    assert data["state_dir"] == str(deep / "state")


def test_mount_refusal_is_one_line_when_output_is_piped(tmp_path: Path) -> None:
    deep = long_dir(tmp_path)
    cold = deep / "cold"
    cold.mkdir()
    config = deep / "tierfs.toml"
    mountpoint = deep / "missing-mountpoint"
    config.write_text(
        f"mountpoint = {toml_str(mountpoint)}\nstate_dir = {toml_str(deep / 'state')}\n"
        + cold_table(cold)
    )
    proc = tierfs_cli("mount", "--foreground", "-c", str(config), columns=None)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(mountpoint) in lines[0] and "does not exist" in lines[0]


# -- tierfs gui ---------------------------------------------------------------------------------


def test_gui_prints_the_login_url_or_one_line_saying_why_not(tmp_path: Path, cold: Path) -> None:
    config = tmp_path / "gui.toml"
    body = base_config(tmp_path, cold) + cold_table(cold)
    config.write_text(body + '[web]\nlisten = ""\n')
    off = tierfs_cli("gui", "--no-browser", "-c", str(config))
    assert off.returncode == 1 and off.stderr.count("\n") == 1, off.stderr
    assert "the web GUI is off" in off.stderr
    config.write_text(body + '[web]\nlisten = "0.0.0.0:5151"\n')
    token_file = tmp_path / "state" / "web.token"
    early = tierfs_cli("gui", "--no-browser", "-c", str(config))
    assert early.returncode == 1 and f"no web token at {token_file}" in early.stderr, early.stderr
    token_file.parent.mkdir()
    token_file.write_text("k" * 43 + "\n")
    token_file.chmod(0o644)
    loose = tierfs_cli("gui", "--no-browser", "-c", str(config))
    assert loose.returncode == 1 and "readable by others" in loose.stderr, loose.stderr
    token_file.chmod(0o600)
    ok = tierfs_cli("gui", "--no-browser", "-c", str(config))
    assert ok.returncode == 0, ok.stderr
    # A wildcard listener is reached on this machine's loopback.
    assert ok.stdout.strip() == "http://127.0.0.1:5151/?token=" + "k" * 43
