"""Config validation: every mistake names the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tierfs import config as config_module
from tierfs.config import Config, format_size, load_config, parse_size, to_toml
from tierfs.errors import ConfigError

GOOD = """
mountpoint = "/models"
state_dir = "/var/lib/tierfs"
[[cold]]
name = "nfs"
path = "/mnt/nfs/models"
[[cold]]
name = "local"
path = "/srv/models"
[[tier]]
name = "ram0"
path = "/mnt/tierfs/ram0"
size = "200G"
rank = 0
[policy]
promote_on_open = true
high_watermark = 0.95
low_watermark = 0.85
"""


@pytest.fixture(autouse=True)
def big_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented example is for an inference node with plenty of RAM."""
    monkeypatch.setattr(config_module, "physical_memory", lambda: 1 << 40)


@pytest.fixture
def stores(fs: FakeFilesystem) -> FakeFilesystem:
    fs.create_dir("/mnt/nfs/models")
    fs.create_dir("/srv/models")
    fs.create_file("/srv/a-file")
    return fs


def write(fs: FakeFilesystem, text: str) -> Path:
    path = Path("/etc/tierfs/config.toml")
    if path.exists():
        path.unlink()
    fs.create_file(path, contents=text)
    return path


def error_of(fs: FakeFilesystem, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(fs, text))
    return caught.value


def test_the_documented_example_is_valid(stores: FakeFilesystem) -> None:
    config = load_config(write(stores, GOOD))
    assert [c.name for c in config.cold] == ["nfs", "local"]
    assert config.tier[0].size == 200 << 30
    assert config.policy.low_watermark == 0.85
    assert config.placement.strategy == "fastest-fit"
    assert (
        load_config(
            write(stores, GOOD + "[placement]\nstrategy = 'fill-first'\n")
        ).placement.strategy
        == "fill-first"
    )
    assert config.catalog_path == Path("/var/lib/tierfs/catalog.sqlite")


# A remote pool that `tierfs pool connect` brings up, as the docs show it.
REMOTE = (
    GOOD
    + """
[[tier]]
name = "remote0"
path = "/mnt/tierfs/remote0"
size = "100G"
rank = 1
kind = "remote"
[tier.remote]
ssh = "root@storage1"
address = "10.0.40.2"
transport = "tcp"
port = 4420
size = "128G"
ssh_options = ["-i", "/etc/tierfs/id_ed25519"]
configfs = "/sys/kernel/config"
ramdisk_dir = "/dev/shm"
"""
)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("colour = 1\n" + GOOD, "colour", "unknown key"),
        (GOOD.replace('name = "nfs"', 'name = "nfs"\nspeed = 3'), "cold[0].speed", "unknown key"),
        ("allow_other = 'yes'\n" + GOOD, "allow_other", "boolean"),
        (GOOD.replace('size = "200G"', 'size = "12 potatoes"'), "tier[0].size", "12 potatoes"),
        (GOOD.replace('size = "200G"', "size = true"), "tier[0].size", "size"),
        (GOOD.replace("/srv/models", "/srv/missing"), "cold[1].path", "does not exist"),
        (GOOD.replace("/srv/models", "/srv/a-file"), "cold[1].path", "not a directory"),
        (GOOD.replace("/srv/models", "srv/models"), "cold[1].path", "not an absolute path"),
        (GOOD.replace('name = "local"', 'name = "nfs"'), None, "two [[cold]] entries"),
        (GOOD.replace("low_watermark = 0.85", "low_watermark = 0.99"), "policy", "must not exceed"),
        (GOOD.replace('mountpoint = "/models"', 'mountpoint = "models"'), "mountpoint", "absolute"),
        (GOOD + "[read]\nprefetch_chunk = 1000\n", "read.prefetch_chunk", "multiple of 4096"),
        (GOOD.replace('name = "ram0"', 'name = "r a m"'), "tier[0].name", "not a valid name"),
        ('mountpoint = "/models"\n', "cold", "required key is missing"),
        ("log_level = 'loud'\n" + GOOD, "log_level", "'debug'"),
        (GOOD.replace('"200G"', '"' + "9" * 300 + '"'), "tier[0].size", "too large"),
        (GOOD.replace('"200G"', "9" * 300), "tier[0].size", "too large"),
        (GOOD.replace('"200G"', '"99999999E"'), "tier[0].size", "too large"),
        (GOOD.replace('"200G"', '"2T"'), "tier[0]", "exceeds this machine's RAM"),
        (GOOD.replace("/var/lib/tierfs", "/srv/a-file"), "state_dir", "not a directory"),
        (GOOD.replace("/var/lib/tierfs", "/models/.state"), None, "inside mountpoint"),
        (GOOD.replace("/var/lib/tierfs", "/srv/models/.st"), None, "inside cold store 'local'"),
        (GOOD.replace("/var/lib/tierfs", "/mnt/tierfs/ram0/s"), None, "overlaps state_dir"),
        (
            GOOD + '[[tier]]\nname = "sub"\npath = "/mnt/tierfs/ram0/sub"\nsize = "1G"\n',
            None,
            "overlaps tier 'sub'",
        ),
        (
            "allow_other = true\ndefault_permissions = false\n" + GOOD,
            None,
            "needs default_permissions = true",
        ),
        (GOOD + "[read]\npassthrough = 'on'\n", "read.passthrough", "'require'"),
        (GOOD + "[placement]\nstrategy = 'widest'\n", "placement.strategy", "'round-robin'"),
        (GOOD + "[placement]\nstrategi = 'fill-first'\n", "placement.strategi", "unknown key"),
        (GOOD + "[web]\nlisten = '5050'\n", "web.listen", "is not HOST:PORT"),
        (GOOD + "[web]\nlisten = 'localhost:99999'\n", "web.listen", "is not HOST:PORT"),
        (GOOD + "[web]\nport = 5050\n", "web.port", "unknown key"),
        (REMOTE.replace('"10.0.40.2"', '"storage-host"'), "tier[1].remote.address", "not an IP"),
        (REMOTE.replace('"tcp"', '"fc"'), "tier[1].remote.transport", "'rdma' or 'tcp'"),
        (REMOTE.replace("port = 4420", "port = 0"), "tier[1].remote.port", "greater than"),
        (REMOTE.replace('kind = "remote"', 'kind = "ram"'), "tier[1]", "kind is not"),
    ],
)
def test_each_mistake_is_one_clear_line(
    stores: FakeFilesystem, text: str, key: str | None, fragment: str
) -> None:
    error = error_of(stores, text)
    line = str(error)
    assert "\n" not in line
    assert line.startswith("/etc/tierfs/config.toml: ")
    if key is not None:
        assert error.key == key
        assert f": {key}: " in line
    assert fragment in line


def test_invalid_toml_names_the_file_and_position(stores: FakeFilesystem) -> None:
    line = str(error_of(stores, GOOD + "this is = = not toml\n"))
    assert line.startswith("/etc/tierfs/config.toml: invalid TOML")
    assert "line" in line


def test_deeply_nested_toml_is_one_clear_line(stores: FakeFilesystem) -> None:
    line = str(error_of(stores, "x = " + "[" * 100_000 + "]" * 100_000 + "\n" + GOOD))
    assert line == "/etc/tierfs/config.toml: invalid TOML: nested too deeply"


def test_a_directory_is_not_a_config_file(stores: FakeFilesystem) -> None:
    with pytest.raises(ConfigError, match=r"^/srv/models: cannot read: Is a directory$"):
        load_config(Path("/srv/models"))


def test_missing_file_is_a_config_error(fs: FakeFilesystem) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Path("/nowhere/config.toml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200G", 200 << 30),
        ("512MiB", 512 << 20),
        ("1.5T", int(1.5 * (1 << 40))),
        ("4k", 4096),
        (123, 123),
        ("77", 77),
        ("2 GB", 2 << 30),
    ],
)
def test_sizes_parse_as_binary_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "G", "-1G", "1X", True, -5, 1.5, None])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_show_round_trips(stores: FakeFilesystem) -> None:
    config = load_config(write(stores, REMOTE))
    assert config.tier[1].remote is not None
    again = load_config(write(stores, to_toml(config)))
    assert again == config
    assert isinstance(again, Config)
    # An unset optional key (TOML has no null) is left out, and stays unset.
    assert "token_file" not in to_toml(config)
    assert again.web_token_path == Path("/var/lib/tierfs/web.token")
    custom = load_config(write(stores, GOOD + '[web]\ntoken_file = "/etc/tierfs/t"\n'))
    assert load_config(write(stores, to_toml(custom))).web_token_path == Path("/etc/tierfs/t")


def test_web_defaults_and_off() -> None:
    from tierfs.config import WebConfig

    assert WebConfig().listen == "127.0.0.1:5050"
    assert WebConfig(listen="").listen == ""
    assert WebConfig(listen="[::1]:8080").listen == "[::1]:8080"


def test_format_size_is_human() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(200 << 30) == "200.0 GiB"
