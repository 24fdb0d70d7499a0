"""The demo's HF hub cache repo, with the blob ids and commit id the hub would give it."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from tierfs.ops.demo.files import Writer
from tierfs.ops.demo.layout import HUB_REPO_DIR, TinyLlamaShape
from tierfs.ops.demo.weights import hf_config, json_bytes, safetensors_bytes

if TYPE_CHECKING:
    import torch


def git_blob_sha1(data: bytes) -> str:
    """Git's object id for a blob with this content (what the hub uses as a small file's etag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file git would store in place of ``data``."""
    oid = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
    ).encode()


def git_commit_sha1(files: dict[str, bytes], message: str) -> str:
    """Commit id of a root commit whose flat tree holds ``files`` (name -> blob content).

    Author and dates are fixed so the id depends only on the content.
    """
    entries = b"".join(
        b"100644 " + name.encode() + b"\0" + bytes.fromhex(git_blob_sha1(data))
        for name, data in sorted(files.items())
    )
    tree = hashlib.sha1(b"tree %d\0" % len(entries) + entries).hexdigest()
    who = "tierfs demo <demo@tierfs.invalid> 0 +0000"
    body = f"tree {tree}\nauthor {who}\ncommitter {who}\n\n{message}\n".encode()
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


def build_hub_repo(w: Writer, sd: dict[str, torch.Tensor], shape: TinyLlamaShape) -> str:
    """Write the hub cache repo of ``sd``; returns its snapshot's revision."""
    config = json_bytes(hf_config(shape))
    weights = safetensors_bytes(sd)
    # The hub serves small files from git (etag = git blob id) and large ones from LFS
    # (etag = sha256 of the content, while git itself stores a pointer file).
    config_etag = git_blob_sha1(config)
    weights_etag = hashlib.sha256(weights).hexdigest()
    revision = git_commit_sha1(
        {"config.json": config, "model.safetensors": lfs_pointer(weights)},
        "Add tiny random Llama for the tierfs demo",
    )
    base = f"hub/{HUB_REPO_DIR}"
    w.write(f"{base}/blobs/{config_etag}", config)
    w.write(f"{base}/blobs/{weights_etag}", weights)
    w.symlink(f"{base}/snapshots/{revision}/config.json", f"../../blobs/{config_etag}")
    w.symlink(f"{base}/snapshots/{revision}/model.safetensors", f"../../blobs/{weights_etag}")
    w.write(f"{base}/refs/main", revision.encode())
    return revision
