"""Real model consumers read the demo store through a tierfs mount and get exactly what they
get from the cold store: safetensors, huggingface_hub, transformers and llama.cpp.

Every comparison is bitwise (xxh3 of tensor bytes, ``torch.equal`` of logits, equal token
ids). The last test runs the whole workload and proves the cold store was left untouched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tests.fuse.mounting import Mount, file_hash
from tierfs.ops.demo import HF_SHARDS, HUB_REPO_DIR, HUB_REPO_ID

LLAMA_PYTHON = os.environ.get("TIERFS_LLAMA_PYTHON", sys.executable)
SAFETENSORS_FILES = (*(f"hf/tiny-llama/{s}" for s in HF_SHARDS), "misc/embeddings.safetensors")
HUB_FILES = ("config.json", "model.safetensors")
INPUT_IDS = torch.tensor([[1, 17, 42, 99, 256, 7, 311, 5]])
OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
OLLAMA_MANIFEST = "ollama/manifests/registry.ollama.ai/library/tiny-llama/latest"

pytestmark = pytest.mark.timeout(300)


def tensor_digests(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name -> (dtype, shape, xxh3 of the raw bytes)."""
    out = {}
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        out[name] = (str(t.dtype), tuple(t.shape), xxhash.xxh3_128_hexdigest(raw))
    return out


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under root: (mode, mtime_ns, xxh3 or link target), without following links."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                content: str = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = file_hash(path)
            else:
                content = "dir"
            out[rel] = (st.st_mode, st.st_mtime_ns, st.st_size, content)
    st = os.lstat(root)
    out["."] = (st.st_mode, st.st_mtime_ns, st.st_size, "dir")
    return out


def ollama_model_blob(root: Path) -> Path:
    """The GGUF layer of the demo's Ollama manifest, found as ollama itself finds it."""
    manifest = json.loads((root / OLLAMA_MANIFEST).read_text())
    layers = [x for x in manifest["layers"] if x["mediaType"] == OLLAMA_MODEL_MEDIA_TYPE]
    assert len(layers) == 1, manifest
    algo, hexdigest = layers[0]["digest"].split(":")
    assert algo == "sha256" and len(hexdigest) == 64
    return root / "ollama" / "blobs" / f"sha256-{hexdigest}"


# -- workloads, shared with the cold-store test ----------------------------------------------


def check_safetensors(mnt: Path, cold: Path) -> None:
    for rel in SAFETENSORS_FILES:
        got = load_file(mnt / rel)
        want = load_file(cold / rel)
        assert got.keys() == want.keys(), rel
        assert len(got) > 0
        assert tensor_digests(got) == tensor_digests(want), rel
        for name in want:
            assert torch.equal(got[name], want[name]), f"{rel}: {name}"
        assert file_hash(mnt / rel) == file_hash(cold / rel)


def check_hub_download(mnt: Path, cold: Path) -> None:
    for filename in HUB_FILES:
        path = Path(
            hf_hub_download(
                repo_id=HUB_REPO_ID,
                filename=filename,
                cache_dir=mnt / "hub",
                local_files_only=True,
            )
        )
        assert path.is_relative_to(mnt), path
        assert path.is_symlink(), f"{path} should be a snapshot symlink"
        # The link resolves to a blob inside the mount, not to the cold store.
        resolved = path.resolve()
        assert resolved.is_relative_to(mnt.resolve()), resolved
        assert resolved.parent == (mnt / "hub" / HUB_REPO_DIR / "blobs").resolve()
        cold_blob = cold / "hub" / HUB_REPO_DIR / "blobs" / resolved.name
        assert path.read_bytes() == cold_blob.read_bytes()
        assert file_hash(path) == file_hash(cold_blob)


def logits_of(model_dir_or_id: str | Path, **kwargs: Any) -> torch.Tensor:
    model = LlamaForCausalLM.from_pretrained(model_dir_or_id, **kwargs)
    model.eval()
    with torch.no_grad():
        logits: torch.Tensor = model(INPUT_IDS).logits
    return logits


def check_transformers(mnt: Path, cold: Path) -> None:
    want = logits_of(cold / "hf" / "tiny-llama")
    assert torch.isfinite(want).all()
    got = logits_of(mnt / "hf" / "tiny-llama")
    assert torch.equal(got, want)
    hub_cold = logits_of(HUB_REPO_ID, cache_dir=cold / "hub", local_files_only=True)
    hub_mnt = logits_of(HUB_REPO_ID, cache_dir=mnt / "hub", local_files_only=True)
    assert torch.equal(hub_mnt, hub_cold)
    # The demo puts the same weights in both layouts.
    assert torch.equal(hub_mnt, want)


_LLAMA_CHILD = r"""
import json, sys
from llama_cpp import Llama

path = sys.argv[1]
llm = Llama(model_path=path, n_ctx=128, use_mmap=True, verbose=False, seed=0)
# llama.cpp maps the model file; report how, from our own maps.
with open("/proc/self/maps") as f:
    maps = [line.split()[1] for line in f if line.rstrip().endswith(path)]
ids = llm.tokenize(b"the model weights are cold", add_bos=True)
out = []
for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
    out.append(int(tok))
    if len(out) == 10:
        break
print(json.dumps({"prompt": ids, "tokens": out, "maps": maps}))
"""


def run_llama_cpp(gguf_path: Path) -> dict[str, list[object]]:
    proc = subprocess.run(
        [LLAMA_PYTHON, "-c", _LLAMA_CHILD, str(gguf_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"llama.cpp child failed ({LLAMA_PYTHON}):\n{proc.stderr[-3000:]}"
    result: dict[str, list[object]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- tests ------------------------------------------------------------------------------------


def test_safetensors_load_file_through_mount_is_bitwise_equal_to_cold(
    demo_mount: Mount, demo_cold: Path
) -> None:
    check_safetensors(demo_mount.mountpoint, demo_cold)
    stats = demo_mount.stats()
    assert stats["opens"] >= len(SAFETENSORS_FILES)
    # The bytes came through the mount: served by the daemon, or by the kernel from
    # backing files the daemon registered at open.
    if stats["read_mode"] == "passthrough":
        assert stats["passthrough_opens"] >= len(SAFETENSORS_FILES)
    else:
        assert stats["read_bytes"] + stats["pushed_bytes"] > 0


def test_hf_hub_download_resolves_snapshot_symlinks_inside_mount(
    demo_mount: Mount, demo_cold: Path
) -> None:
    check_hub_download(demo_mount.mountpoint, demo_cold)


def test_transformers_from_pretrained_through_mount_gives_identical_logits(
    demo_mount: Mount, demo_cold: Path
) -> None:
    check_transformers(demo_mount.mountpoint, demo_cold)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_llama_cpp_mmap_shared_through_mount_generates_same_tokens(
    demo_mount: Mount, demo_cold: Path
) -> None:
    mnt = demo_mount.mountpoint
    blob = ollama_model_blob(mnt)
    assert blob.name == ollama_model_blob(demo_cold).name
    assert file_hash(blob) == file_hash(ollama_model_blob(demo_cold))
    pairs = [
        (blob, ollama_model_blob(demo_cold)),
        (mnt / "gguf" / "tiny-llama.gguf", demo_cold / "gguf" / "tiny-llama.gguf"),
    ]
    for through_mount, cold in pairs:
        opens_before = demo_mount.stats()["opens"]
        got = run_llama_cpp(through_mount)
        want = run_llama_cpp(cold)
        assert len(want["tokens"]) == 10
        assert got["prompt"] == want["prompt"]
        assert got["tokens"] == want["tokens"], through_mount
        # The weights really were mapped shared from the mount (flags like "r--s").
        assert got["maps"], f"llama.cpp did not mmap {through_mount}"
        assert all(str(flags).endswith("s") for flags in got["maps"]), got["maps"]
        assert demo_mount.stats()["opens"] > opens_before


def test_consumer_workload_leaves_cold_store_unchanged(
    demo_mount: Mount, demo_cold: Path, tmp_path: Path
) -> None:
    before = snapshot_tree(demo_cold)
    mnt = demo_mount.mountpoint
    check_safetensors(mnt, demo_cold)
    check_hub_download(mnt, demo_cold)
    check_transformers(mnt, demo_cold)
    # Plain reads of every file, including mmap-style random access to the GGUF.
    for path in mnt.rglob("*"):
        if path.is_file() and not path.is_symlink():
            cold = demo_cold / path.relative_to(mnt)
            assert file_hash(path) == file_hash(cold), path
    # Writes through the mount are refused and change nothing.
    with pytest.raises(OSError):
        (mnt / "gguf" / "tiny-llama.gguf").write_bytes(b"x")
    with pytest.raises(OSError):
        (mnt / "new-file").write_bytes(b"x")
    demo_mount.stop()
    assert snapshot_tree(demo_cold) == before
