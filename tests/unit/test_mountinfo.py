"""tierfs.mountinfo: the one parser of the kernel's mount table."""

from __future__ import annotations

from pathlib import Path

from tierfs.mountinfo import containing_mount, read_mounts, unescape

# Two lines as Linux writes them; the second mountpoint is "/srv/a b\tc\\d".
TABLE = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "97 22 0:45 / /srv/a\\040b\\011c\\134d rw,nosuid master:7 - tmpfs my\\040src "
    "rw,size=65536k,mode=700\n"
)


def test_every_escaped_character_is_decoded(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(TABLE)
    root, odd = read_mounts(table)
    assert (root.mount_id, root.mountpoint, root.fstype, root.source) == (
        22,
        Path("/"),
        "ext4",
        "/dev/vda",
    )
    assert odd.mountpoint == Path("/srv/a b\tc\\d")
    assert odd.source == "my src"
    assert (odd.major_minor, odd.super_options) == ("0:45", "rw,size=65536k,mode=700")


def test_unescape_leaves_plain_backslashes_alone() -> None:
    assert unescape("a\\040b") == "a b"
    assert unescape("a\\9b\\") == "a\\9b\\"


def test_the_innermost_mount_contains_a_path() -> None:
    shm = containing_mount("/dev/shm/not-there")
    assert shm is not None and shm.mountpoint == Path("/dev/shm")
    root = containing_mount("/")
    assert root is not None and root.mountpoint == Path("/")
