"""A real mount with its web listener on a free local port, for the web GUI's tests."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, MountFactory

MiB = tu.MiB
HF_MODEL = "hf/big"
# Two shards, so that a promotion shows progress between them.
HF_FILES = {
    "hf/big/model-00001-of-00002.safetensors": (3 * MiB + 4321, 2),
    "hf/big/model-00002-of-00002.safetensors": (2 * MiB + 77, 3),
}
CONFIG_COMMENT = "# ram0 is the node's fast pool; keep this comment"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_store(root: Path) -> dict[str, str]:
    """An HF model directory (config + two shards) and a lone file; relpath -> xxh3."""
    hashes = {}
    config = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'
    (root / "hf/big").mkdir(parents=True)
    (root / "hf/big/config.json").write_bytes(config)
    hashes["hf/big/config.json"] = tu.xxh(config)
    for rel, (size, seed) in HF_FILES.items():
        hashes[rel] = tu.write_random(root / rel, size, seed)
    hashes["solo/small.safetensors"] = tu.write_random(root / "solo/small.safetensors", MiB, 4)
    return hashes


@dataclass
class WebMount:
    """A mount serving its web listener at `url`, with its token."""

    mount: Mount
    url: str

    @property
    def token(self) -> str:
        return (self.mount.state_dir / "web.token").read_text().strip()

    def client(self, token: str | None = None) -> httpx.Client:
        """A client of the web listener; with the bearer `token` when one is given.

        A fresh connection for every request: one left idle while a test waits on the
        mount can be closed by the server (keep-alive timeout) just as the next request
        goes out on it, which says nothing about the listener (the soak's junk client
        does the same).
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=30,
            limits=httpx.Limits(max_keepalive_connections=0),
        )


def web_mount(
    mount_factory: MountFactory,
    tiers: Path,
    cold: Path,
    *,
    policy: str = "promote_on_open = false\n",
    env: dict[str, str] | None = None,
) -> WebMount:
    """Mount `cold` with a 64 MiB tier ram0 and the web listener on a free port."""
    port = free_port()
    extra = (
        f"{CONFIG_COMMENT}\n"
        + tu.tier_toml("ram0", tiers / "ram0", "64M")
        + "\n[policy]  # how models move\n"
        + policy
        + f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
    )
    mount = mount_factory([("c", cold)], extra=extra, env=env)
    return WebMount(mount, f"http://127.0.0.1:{port}")
