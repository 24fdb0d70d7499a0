"""A throwaway ssh host for the remote-pool tests: sshd in a network namespace.

The namespace gets one end of a veth pair and an address of its own; sshd listens only
there and accepts one key made for the test. It shares this machine's kernel and file
systems, so what a script does over ssh (a loop device, a file) is real and visible here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshHost:
    """How to reach the test host."""

    destination: str
    address: str
    options: list[str]
    #: An address on the same link where nothing answers.
    unreachable: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def ssh_host(base: Path) -> Iterator[SshHost]:
    """Start sshd in a fresh network namespace; tear everything down afterwards."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.fail("these tests need sshd and ssh (apt install openssh-server openssh-client)")
    tag = secrets.token_hex(3)
    netns, veth, peer = f"tierfs-{tag}", f"tfh{tag}", f"tfp{tag}"
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    here, there = f"{subnet}.1", f"{subnet}.2"
    base.mkdir(parents=True, exist_ok=True)
    key, host_key = base / "client_key", base / "host_key"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    (base / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    config = base / "sshd_config"
    config.write_text(
        f"ListenAddress {there}\nPort 22\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile {base / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    _ip("netns", "add", netns)
    sshd: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        _ip("addr", "add", f"{here}/24", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "addr", "add", f"{there}/24", "dev", peer)
        _ip("-n", netns, "link", "set", peer, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        log = open(base / "sshd.log", "wb")  # noqa: SIM115 - closed with the process below
        sshd = subprocess.Popen(
            ["ip", "netns", "exec", netns, SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        options = [
            "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        host = SshHost(f"root@{there}", there, options, f"{subnet}.3")
        _wait_for_ssh(host, sshd)
        yield host
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(10)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def _wait_for_ssh(host: SshHost, sshd: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", *host.options,
             host.destination, "true"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        if sshd.poll() is not None:
            raise AssertionError(f"sshd exited {sshd.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"ssh to {host.destination} did not work within 30s: {probe.stderr}")
