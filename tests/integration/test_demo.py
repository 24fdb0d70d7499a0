"""The demo store is real: transformers, huggingface_hub and gguf read it, and the scanner
finds exactly its five units."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np
import pytest
import torch
from huggingface_hub import hf_hub_download, scan_cache_dir
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tierfs.errors import TierfsError
from tierfs.namespace.models import ModelKind, find_model, models_by_file, scan_directory
from tierfs.ops.demo import (
    DEMO_VERSION,
    HUB_REPO_DIR,
    MARKER,
    TINY_LLAMA,
    DemoError,
    DemoStore,
    build_demo_store,
)
from tierfs.ops.demo.gguf_writer import spm_vocab
from tierfs.ops.demo.hub import git_blob_sha1
from tierfs.ops.demo.weights import llama_state_dict


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    return build_demo_store(tmp_path_factory.mktemp("demo"))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every regular file and the target of every symlink under root."""
    out: dict[str, str] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_scan_finds_exactly_the_five_units(store: DemoStore) -> None:
    result = scan_directory(store.root)
    rev = store.hub_revision
    hub = f"hub/{HUB_REPO_DIR}"
    config_blob = git_blob_sha1((store.hf_dir / "config.json").read_bytes())
    weights_blob = (store.hub_repo / "snapshots" / rev / "model.safetensors").resolve().name
    ollama_files = {
        "ollama/" + p.relative_to(store.ollama_root).as_posix()
        for p in store.ollama_root.rglob("*")
        if p.is_file()
    }

    assert result.problems == ()
    assert tuple(m.name for m in result.models) == store.model_names
    got = {m.name: (m.kind, m.files) for m in result.models}
    assert got == {
        "gguf/tiny-llama.gguf": (ModelKind.FILE, ("gguf/tiny-llama.gguf",)),
        "hf/tiny-llama": (
            ModelKind.HF_DIR,
            (
                "hf/tiny-llama/config.json",
                "hf/tiny-llama/generation_config.json",
                "hf/tiny-llama/model-00001-of-00002.safetensors",
                "hf/tiny-llama/model-00002-of-00002.safetensors",
                "hf/tiny-llama/model.safetensors.index.json",
            ),
        ),
        "misc/embeddings.safetensors": (ModelKind.FILE, ("misc/embeddings.safetensors",)),
        f"tierfs-demo/tiny-llama@{rev[:12]}": (
            ModelKind.HF_HUB,
            tuple(sorted([f"{hub}/blobs/{config_blob}", f"{hub}/blobs/{weights_blob}"])),
        ),
        "tiny-llama:latest": (ModelKind.OLLAMA, tuple(sorted(ollama_files))),
    }
    for m in result.models:
        assert m.size == sum((store.root / f).stat().st_size for f in m.files)
    assert find_model(result.models, "tiny-llama").name == "tiny-llama:latest"
    assert find_model(result.models, "tierfs-demo/tiny-llama").revision == rev
    # Every file the demo wrote belongs to exactly one unit (the GGUF is copied, not shared),
    # except the hub ref, which is repo metadata recorded as Model.refs.
    index = models_by_file(result.models)
    assert all(len(names) == 1 for names in index.values())
    assert set(store.files) - set(index) == {f"{hub}/refs/main"}
    assert find_model(result.models, "tierfs-demo/tiny-llama").refs == ("main",)


def test_transformers_loads_hf_dir_with_exact_keys(store: DemoStore) -> None:
    loaded = LlamaForCausalLM.from_pretrained(store.hf_dir, output_loading_info=True)
    # transformers' stubs do not model the (model, info) return of output_loading_info=True.
    model, info = cast(tuple[LlamaForCausalLM, dict[str, Any]], loaded)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    ids = torch.tensor([[1, 300, 301, 302, 303]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 5, 512)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.1  # random weights, not zeros
    expected = llama_state_dict(TINY_LLAMA, store.seed)
    got = model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_hf_index_matches_shards(store: DemoStore) -> None:
    index = json.loads((store.hf_dir / "model.safetensors.index.json").read_text())
    seen: dict[str, str] = {}
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        for name, tensor in load_file(store.hf_dir / shard).items():
            seen[name] = shard
            total += tensor.numel() * tensor.element_size()
    assert seen == index["weight_map"]
    assert total == index["metadata"]["total_size"]


def test_hub_cache_resolves_offline(store: DemoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = hf_hub_download(
        repo_id="tierfs-demo/tiny-llama",
        filename="config.json",
        cache_dir=store.root / "hub",
        local_files_only=True,
    )
    snap = store.hub_repo / "snapshots" / store.hub_revision
    assert Path(path) == snap / "config.json"
    assert (store.hub_repo / "refs" / "main").read_text() == store.hub_revision
    for name in ("config.json", "model.safetensors"):
        target = os.readlink(snap / name)
        assert not os.path.isabs(target) and target.startswith("../../blobs/")
    config = (snap / "config.json").read_bytes()
    weights = (snap / "model.safetensors").read_bytes()
    assert os.readlink(snap / "config.json") == f"../../blobs/{git_blob_sha1(config)}"
    assert os.readlink(snap / "model.safetensors") == (
        f"../../blobs/{hashlib.sha256(weights).hexdigest()}"
    )
    info = scan_cache_dir(store.root / "hub")
    assert info.warnings == []
    (repo,) = info.repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.commit_hash, set(revision.refs)) == (
        "tierfs-demo/tiny-llama",
        store.hub_revision,
        {"main"},
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_hub_revision_is_the_git_commit_of_the_repo(store: DemoStore, tmp_path: Path) -> None:
    snap = store.hub_repo / "snapshots" / store.hub_revision
    weights = (snap / "model.safetensors").read_bytes()
    (tmp_path / "config.json").write_bytes((snap / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(weights).hexdigest()}\nsize {len(weights)}\n"
    )
    who = {"NAME": "tierfs demo", "EMAIL": "demo@tierfs.invalid", "DATE": "@0 +0000"}
    env = {**os.environ} | {
        f"GIT_{r}_{k}": v for r in ("AUTHOR", "COMMITTER") for k, v in who.items()
    }
    git = ["git", "-C", str(tmp_path), "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    subprocess.run([*git, "add", "."], check=True, env=env)
    subprocess.run(
        [*git, "commit", "-qm", "Add tiny random Llama for the tierfs demo"], check=True, env=env
    )
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, env=env, capture_output=True, text=True
    )
    assert head.stdout.strip() == store.hub_revision


def test_ollama_digests_are_sha256_of_blobs(store: DemoStore) -> None:
    manifest = json.loads(store.ollama_manifest.read_text())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    descriptors = [manifest["config"], *manifest["layers"]]
    for desc in descriptors:
        hexd = desc["digest"].removeprefix("sha256:")
        data = (store.ollama_root / "blobs" / f"sha256-{hexd}").read_bytes()
        assert hashlib.sha256(data).hexdigest() == hexd
        assert len(data) == desc["size"]
    media = [layer["mediaType"] for layer in manifest["layers"]]
    assert media == [
        "application/vnd.ollama.image.model",
        "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.params",
    ]
    model_blob = manifest["layers"][0]["digest"].replace(":", "-")
    assert (store.ollama_root / "blobs" / model_blob).read_bytes() == store.gguf_file.read_bytes()
    config = json.loads(
        (store.ollama_root / "blobs" / manifest["config"]["digest"].replace(":", "-")).read_text()
    )
    assert config["model_format"] == "gguf"
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]


def test_gguf_parses_and_holds_the_same_weights(store: DemoStore) -> None:
    reader = gguf.GGUFReader(store.gguf_file)
    fields = reader.fields

    def scalar(key: str) -> object:
        field = fields[key]
        value = field.parts[field.data[0]]
        if field.types[0] == gguf.GGUFValueType.STRING:
            return bytes(value).decode()
        return value.tolist()[0]

    assert scalar("general.architecture") == "llama"
    assert scalar("tokenizer.ggml.model") == "llama"
    assert scalar("llama.block_count") == 2
    assert scalar("llama.embedding_length") == 64
    tokens, _, types = spm_vocab(512)
    token_field = fields["tokenizer.ggml.tokens"]
    stored = [bytes(token_field.parts[i]).decode() for i in token_field.data]
    assert stored == tokens
    assert stored[3] == "<0x00>" and stored[258] == "<0xFF>"
    type_field = fields["tokenizer.ggml.token_type"]
    stored_types = [int(type_field.parts[i][0]) for i in type_field.data]
    assert stored_types == types
    assert stored_types[3:259] == [int(gguf.TokenType.BYTE)] * 256

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 2 * 9
    sd = llama_state_dict(TINY_LLAMA, store.seed)
    emb = tensors["token_embd.weight"]
    assert emb.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(emb.shape) == [64, 512]  # GGUF lists the fastest-varying dimension first
    np.testing.assert_array_equal(np.asarray(emb.data), sd["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.1.attn_v.weight"].data),
        sd["model.layers.1.self_attn.v_proj.weight"].numpy(),
    )


def test_rebuild_is_skipped_and_deterministic(store: DemoStore, tmp_path: Path) -> None:
    before = {f: (store.root / f).lstat().st_mtime_ns for f in store.files}
    again = build_demo_store(store.root)
    assert again == store
    assert {f: (store.root / f).lstat().st_mtime_ns for f in store.files} == before

    twin = build_demo_store(tmp_path / "twin")
    assert tree_digest(twin.root) == tree_digest(store.root)
    assert twin.model_names == store.model_names


def test_new_seed_replaces_only_demo_paths(tmp_path: Path) -> None:
    first = build_demo_store(tmp_path)
    (tmp_path / "hf" / "mine.txt").write_text("user data")
    second = build_demo_store(tmp_path, seed=1)

    assert second.hub_revision != first.hub_revision
    assert json.loads((tmp_path / MARKER).read_text())["version"] == DEMO_VERSION
    assert (tmp_path / "hf" / "mine.txt").read_text() == "user data"
    result = scan_directory(tmp_path)
    assert tuple(m.name for m in result.models) == second.model_names
    assert not (first.hub_repo / "snapshots" / first.hub_revision).exists()
    assert all((tmp_path / f).exists() for f in second.files)
    assert not any((tmp_path / f).exists() for f in set(first.files) - set(second.files))


def test_git_blob_ids_match_git() -> None:
    # Known ids from `git hash-object`.
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_unwritable_root_raises_demo_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DemoError) as e:
        build_demo_store(blocker)
    assert e.value.path == str(blocker)
    assert isinstance(e.value, TierfsError)


def test_a_vocabulary_too_small_for_the_byte_tokens_is_a_named_error() -> None:
    with pytest.raises(DemoError, match="cannot build a 10-token vocabulary") as info:
        spm_vocab(10)
    assert info.value.errno == errno.EINVAL
