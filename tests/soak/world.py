"""What the soak runs against: a cold store on disk, real tmpfs tiers, a real daemon.

Every model file is deterministic pseudo-random bytes from a seed, so a reader process can
rebuild the expected bytes itself, even while the cold store is hidden.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuse.mounting import Mount, file_hash, write_config, xxh
from tests.fuse.tierutil import mounts_under, unmount_all_under
from tierfs.control.client import ControlClient

MiB = 1 << 20
# Lone GGUF files and one HF directory: about 56 MiB in all, more than the tiers hold
# (ram0 24 MiB, ram1 16 MiB), so promotions have to evict.
LONE_SIZES = (3 * MiB + 17, 4 * MiB - 3, 5 * MiB + 4097, 6 * MiB - 1, 7 * MiB + 1, 9 * MiB)
HF_FILES = {
    "model-00001-of-00002.safetensors": 8 * MiB + 5,
    "model-00002-of-00002.safetensors": 6 * MiB - 9,
}
HF_CONFIG = json.dumps({"model_type": "llama", "hidden_size": 64})
RAM0_SIZE = "24M"
RAM1_SIZE = 16 * MiB


def file_bytes(spec: dict[str, Any]) -> bytes:
    """The content of a manifest entry, rebuilt from its seed (or its text)."""
    if spec.get("text") is not None:
        return str(spec["text"]).encode()
    return random.Random(spec["seed"]).randbytes(spec["size"])


@dataclass
class World:
    """The soak's directories, config and daemon. Everything lives under `base`."""

    base: Path

    @property
    def cold(self) -> Path:
        return self.base / "cold"

    @property
    def empty(self) -> Path:
        return self.base / "empty"

    @property
    def ram0(self) -> Path:
        return self.base / "tiers" / "ram0"

    @property
    def ram1(self) -> Path:
        return self.base / "tiers" / "ram1"

    @property
    def ballast(self) -> Path:
        # At the tier's root, outside hot/ and .tmp/: tierfs neither serves nor removes it.
        return self.ram1 / "ballast"

    @property
    def manifest_path(self) -> Path:
        return self.base / "manifest.json"

    @property
    def state_path(self) -> Path:
        return self.base / "outages.json"

    def build(self) -> dict[str, dict[str, Any]]:
        """Write the cold store and the manifest; returns relpath -> spec."""
        manifest: dict[str, dict[str, Any]] = {}
        for i, size in enumerate(LONE_SIZES):
            manifest[f"lone/m{i}.gguf"] = {"seed": 1000 + i, "size": size}
        for i, (name, size) in enumerate(HF_FILES.items()):
            manifest[f"hf/mini/{name}"] = {"seed": 2000 + i, "size": size}
        manifest["hf/mini/config.json"] = {"text": HF_CONFIG, "size": len(HF_CONFIG)}
        for relpath, spec in manifest.items():
            data = file_bytes(spec)
            path = self.cold / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            spec["xxh3"] = xxh(data)
        self.manifest_path.write_text(json.dumps(manifest))
        self.empty.mkdir(parents=True, exist_ok=True)
        return manifest

    def models(self) -> list[str]:
        return [f"lone/m{i}.gguf" for i in range(len(LONE_SIZES))] + ["hf/mini"]

    def mount(self, web_listen: str = "") -> Mount:
        """Mount ram1 (a tmpfs of exactly its configured size) and write the config.

        `web_listen` (``HOST:PORT``) turns the daemon's web listener on there.
        """
        self.ram1.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={RAM1_SIZE},mode=0700", "soak-ram1", self.ram1],
            check=True,
        )
        tiers = (
            f'[[tier]]\nname = "ram0"\npath = "{self.ram0}"\nsize = "{RAM0_SIZE}"\nrank = 0\n'
            f'[[tier]]\nname = "ram1"\npath = "{self.ram1}"\nsize = "{RAM1_SIZE}"\nrank = 1\n'
            "mount_tmpfs = false\n"
            # Opens promote too; a short cooldown keeps models moving.
            '[policy]\npromote_on_open = true\nmin_size = "1M"\ncooldown_s = 2\n'
            "high_watermark = 0.95\nlow_watermark = 0.7\n"
            f'[web]\nlisten = "{web_listen}"\n'
        )
        mountpoint = self.base / "mnt"
        mountpoint.mkdir(exist_ok=True)
        config = write_config(
            self.base / "config.toml",
            mountpoint=mountpoint,
            state_dir=self.base / "state",
            cold=[("cold", self.cold)],
            extra=tiers,
        )
        (self.base / "config.toml").write_text(
            config.read_text().replace('log_level = "debug"', 'log_level = "info"')
        )
        return Mount(
            config=config,
            mountpoint=mountpoint,
            state_dir=self.base / "state",
            log=self.base / "tierfs.log",
        )

    def client(self, timeout: float = 30.0) -> ControlClient:
        return ControlClient(self.base / "state" / "control.sock", timeout=timeout)

    # Outage windows, shared with the reader processes ----------------------------------

    def write_outages(self, state: dict[str, Any]) -> None:
        temp = self.state_path.with_suffix(".tmp")
        temp.write_text(json.dumps(state))
        os.replace(temp, self.state_path)

    # The cold store hidden under a bind mount -------------------------------------------

    def hide_cold(self) -> None:
        subprocess.run(["mount", "--bind", str(self.empty), str(self.cold)], check=True)

    def show_cold(self) -> None:
        subprocess.run(["umount", str(self.cold)], check=True)

    def corrupt_hot_copies(self) -> int:
        """Flip the middle byte of every hot copy, behind tierfs's back; returns how many.

        Only for --inject-corruption, which shows that the soak catches wrong bytes.
        """
        flipped = 0
        for tier in (self.ram0, self.ram1):
            for path in sorted((tier / "hot").rglob("*")):
                size = path.stat().st_size if path.is_file() else 0
                if size:
                    with open(path, "r+b") as f:
                        f.seek(size // 2)
                        byte = f.read(1)
                        f.seek(size // 2)
                        f.write(bytes([byte[0] ^ 0xFF]))
                    flipped += 1
        return flipped

    def cleanup(self, mount: Mount | None) -> list[tuple[str, str, str]]:
        """Stop the daemon and detach everything mounted under `base`; returns leftovers."""
        if mount is not None and mount.process is not None and mount.process.poll() is None:
            mount.process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                mount.process.wait(30)
        unmount_all_under(self.base)
        time.sleep(0.2)
        return mounts_under(self.base)


def hash_uncached(path: Path) -> str:
    """xxh3-128 of a file read through the mount, its page cache dropped first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return file_hash(path)
