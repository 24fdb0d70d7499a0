"""Build a small demo cold store holding one tiny, randomly initialised but real Llama model.

The same weights appear in every layout tierfs recognises::

    hf/tiny-llama/                      HF model directory, two safetensors shards + index
    hub/models--tierfs-demo--tiny-llama HF hub cache repo with one snapshot
    ollama/                             Ollama store: manifest, GGUF model layer, template...
    gguf/tiny-llama.gguf                lone GGUF that llama.cpp loads and generates from
    misc/embeddings.safetensors         lone safetensors file (an unrelated embedding table)

Everything is written with torch, safetensors and gguf only (no transformers), is
deterministic for a seed, and totals about 2.5 MiB.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save as safetensors_save

from tierfs.errors import TierfsError
from tierfs.namespace.models import hub_model_name, ollama_model_name

log = logging.getLogger(__name__)

#: Bump when the layout or content of the demo store changes; older stores are rebuilt.
DEMO_VERSION = 1
MARKER = ".tierfs-demo.json"

HUB_REPO_ID = "tierfs-demo/tiny-llama"
HUB_REPO_DIR = "models--tierfs-demo--tiny-llama"
OLLAMA_HOST, OLLAMA_NAMESPACE, OLLAMA_MODEL, OLLAMA_TAG = (
    "registry.ollama.ai",
    "library",
    "tiny-llama",
    "latest",
)
HF_SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

_SPM_SPACE = "\u2581"  # sentencepiece's word-boundary marker
_COMMON_WORDS = (
    "the of and to in is it that was for on are as with he they at be this from have or by"
    " one had not but what all were when we there can an your which their said if do will"
    " each about how up out them then she many some so these would other into has more her"
    " two like him see time could no make than first been its who now people my made over"
    " did down only way find use may water long little very after words called just where"
    " most know model weights tier cold hot cache file"
)


class DemoError(TierfsError):
    """The demo store could not be built at ``path``."""


@dataclass(frozen=True, slots=True)
class TinyLlamaShape:
    """Hyper-parameters of the demo model."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    context_length: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


TINY_LLAMA = TinyLlamaShape()


@dataclass(frozen=True, slots=True)
class DemoStore:
    """What :func:`build_demo_store` created. Paths in ``files`` are relative to ``root``.

    Attributes:
        files: every regular file and symlink the demo owns, sorted.
        model_names: the names `tierfs.namespace.models.scan_models` gives the five units,
            sorted.
    """

    root: Path
    seed: int
    version: int
    hf_dir: Path
    hub_repo: Path
    hub_revision: str
    ollama_root: Path
    ollama_manifest: Path
    gguf_file: Path
    embeddings_file: Path
    files: tuple[str, ...]
    model_names: tuple[str, ...]


# -- weights -----------------------------------------------------------------------------------


def llama_state_dict(shape: TinyLlamaShape, seed: int) -> dict[str, torch.Tensor]:
    """Random f32 weights under the names and shapes ``LlamaForCausalLM`` expects.

    Args:
        shape: model hyper-parameters.
        seed: seed of the torch generator; equal seeds give equal tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    h, i, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim

    def normal(*dims: int) -> torch.Tensor:
        # A larger std than HF's 0.02 keeps logits far from uniform, so greedy generation
        # actually depends on the weights.
        return torch.randn(*dims, generator=gen, dtype=torch.float32) * 0.2

    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(shape.vocab_size, h)}
    for n in range(shape.num_layers):
        p = f"model.layers.{n}."
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "self_attn.q_proj.weight"] = normal(shape.num_heads * hd, h)
        sd[p + "self_attn.k_proj.weight"] = normal(shape.num_kv_heads * hd, h)
        sd[p + "self_attn.v_proj.weight"] = normal(shape.num_kv_heads * hd, h)
        sd[p + "self_attn.o_proj.weight"] = normal(h, shape.num_heads * hd)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
        sd[p + "mlp.gate_proj.weight"] = normal(i, h)
        sd[p + "mlp.up_proj.weight"] = normal(i, h)
        sd[p + "mlp.down_proj.weight"] = normal(h, i)
    sd["model.norm.weight"] = torch.ones(h)
    sd["lm_head.weight"] = normal(shape.vocab_size, h)
    return sd


def hf_config(shape: TinyLlamaShape) -> dict[str, object]:
    """``config.json`` contents for the demo model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.context_length,
        "rms_norm_eps": shape.rms_norm_eps,
        # Older transformers read rope_theta, newer ones rope_parameters.
        "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _json_bytes(doc: object) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    data: bytes = safetensors_save(
        {k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"}
    )
    return data


# -- GGUF ----------------------------------------------------------------------------------------


def spm_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A sentencepiece-style vocabulary that llama.cpp's "llama" tokenizer accepts.

    llama.cpp aborts on a llama vocab without the 256 byte-fallback tokens, so ids 3..258 are
    ``<0x00>``..``<0xFF>``; the rest are characters and common English fragments, ranked by a
    descending score so merges prefer longer, earlier pieces.

    Returns:
        (tokens, scores, token types) of length ``size``.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = [_SPM_SPACE, *string.ascii_letters, *string.digits, *".,!?'-:;()\""]
    pieces += [_SPM_SPACE + c for c in string.ascii_lowercase]
    words = _COMMON_WORDS.split()
    pieces += [_SPM_SPACE + w for w in words]
    pieces += ["th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or"]
    for a in string.ascii_lowercase:
        for b in string.ascii_lowercase:
            if len(tokens) + len(pieces) >= size:
                break
            candidate = _SPM_SPACE + a + b
            if candidate not in pieces:
                pieces.append(candidate)
    pieces = list(dict.fromkeys(pieces))[: size - len(tokens)]
    if len(tokens) + len(pieces) != size:
        raise ValueError(f"cannot build a {size}-token vocabulary")
    scores = [0.0] * len(tokens) + [-float(n) for n in range(len(pieces))]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    return tokens, scores, [int(t) for t in types]


def _rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # HF rotates the two halves of each head; llama.cpp's llama rope rotates adjacent pairs.
    # Reordering rows per head makes the GGUF compute exactly what the HF model computes.
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _gguf_tensors(
    sd: dict[str, torch.Tensor], shape: TinyLlamaShape
) -> Iterator[tuple[str, np.ndarray]]:
    yield "token_embd.weight", sd["model.embed_tokens.weight"].numpy()
    for n in range(shape.num_layers):
        p, b = f"model.layers.{n}.", f"blk.{n}."
        yield b + "attn_norm.weight", sd[p + "input_layernorm.weight"].numpy()
        q = _rope_interleave(sd[p + "self_attn.q_proj.weight"], shape.num_heads)
        k = _rope_interleave(sd[p + "self_attn.k_proj.weight"], shape.num_kv_heads)
        yield b + "attn_q.weight", q.numpy()
        yield b + "attn_k.weight", k.numpy()
        yield b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"].numpy()
        yield b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"].numpy()
        yield b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"].numpy()
        yield b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"].numpy()
        yield b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"].numpy()
        yield b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"].numpy()
    yield "output_norm.weight", sd["model.norm.weight"].numpy()
    yield "output.weight", sd["lm_head.weight"].numpy()


def write_llama_gguf(path: Path, sd: dict[str, torch.Tensor], shape: TinyLlamaShape) -> None:
    """Write ``sd`` (HF names) as an f32 llama-architecture GGUF with an SPM vocabulary.

    Args:
        path: destination; written through a temporary file and renamed into place.
        sd: weights as returned by :func:`llama_state_dict`.
        shape: hyper-parameters matching ``sd``.
    """
    tokens, scores, types = spm_vocab(shape.vocab_size)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, array in _gguf_tensors(sd, shape):
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)


# -- git / hub helpers ---------------------------------------------------------------------------


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


# -- building ------------------------------------------------------------------------------------


class _Writer:
    """Writes files under a root and remembers every path it created."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: set[str] = set()

    def write(self, rel: str, data: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.created.add(rel)
        return path

    def symlink(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        os.symlink(target, path)
        self.created.add(rel)


def _build_hf_dir(w: _Writer, sd: dict[str, torch.Tensor], shape: TinyLlamaShape) -> None:
    # Shard 1: embeddings and the first half of the layers; shard 2: the rest.
    split = shape.num_layers // 2
    first = {
        k: v
        for k, v in sd.items()
        if k == "model.embed_tokens.weight"
        or (k.startswith("model.layers.") and int(k.split(".")[2]) < split)
    }
    shards = (first, {k: v for k, v in sd.items() if k not in first})
    weight_map: dict[str, str] = {}
    total = 0
    for shard_name, tensors in zip(HF_SHARDS, shards, strict=True):
        w.write(f"hf/tiny-llama/{shard_name}", _safetensors_bytes(tensors))
        for k, v in tensors.items():
            weight_map[k] = shard_name
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    w.write("hf/tiny-llama/model.safetensors.index.json", _json_bytes(index))
    w.write("hf/tiny-llama/config.json", _json_bytes(hf_config(shape)))
    generation = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False, "max_length": 64}
    w.write("hf/tiny-llama/generation_config.json", _json_bytes(generation))


def _build_hub_repo(w: _Writer, sd: dict[str, torch.Tensor], shape: TinyLlamaShape) -> str:
    config = _json_bytes(hf_config(shape))
    weights = _safetensors_bytes(sd)
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


def _build_ollama(w: _Writer, gguf_bytes: bytes) -> str:
    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        w.write(f"ollama/blobs/sha256-{digest}", data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layers = [
        blob(gguf_bytes, "application/vnd.ollama.image.model"),
        blob(b"{{ .Prompt }}", "application/vnd.ollama.image.template"),
        blob(
            json.dumps({"stop": ["</s>"], "temperature": 0}).encode(),
            "application/vnd.ollama.image.params",
        ),
    ]
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "140K",
        "file_type": "F32",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": blob(
            json.dumps(config).encode(), "application/vnd.docker.container.image.v1+json"
        ),
        "layers": layers,
    }
    rel = f"ollama/manifests/{OLLAMA_HOST}/{OLLAMA_NAMESPACE}/{OLLAMA_MODEL}/{OLLAMA_TAG}"
    w.write(rel, json.dumps(manifest).encode())
    return rel


def _owned_paths(previous: dict[str, object] | None) -> list[str]:
    owned = [
        "hf/tiny-llama",
        f"hub/{HUB_REPO_DIR}",
        f"ollama/manifests/{OLLAMA_HOST}/{OLLAMA_NAMESPACE}/{OLLAMA_MODEL}",
        "gguf/tiny-llama.gguf",
        "misc/embeddings.safetensors",
    ]
    files = previous.get("files") if previous else None
    if isinstance(files, list):
        owned += [f for f in files if isinstance(f, str) and f.startswith("ollama/blobs/")]
    return owned


def _remove_owned(root: Path, previous: dict[str, object] | None) -> None:
    for rel in _owned_paths(previous):
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _read_marker(root: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _store_from_marker(root: Path, doc: dict[str, object]) -> DemoStore | None:
    try:
        store = DemoStore(
            root=root,
            seed=int(doc["seed"]),  # type: ignore[call-overload]
            version=int(doc["version"]),  # type: ignore[call-overload]
            hf_dir=root / "hf/tiny-llama",
            hub_repo=root / "hub" / HUB_REPO_DIR,
            hub_revision=str(doc["hub_revision"]),
            ollama_root=root / "ollama",
            ollama_manifest=root / str(doc["ollama_manifest"]),
            gguf_file=root / "gguf/tiny-llama.gguf",
            embeddings_file=root / "misc/embeddings.safetensors",
            files=tuple(str(f) for f in doc["files"]),  # type: ignore[attr-defined]
            model_names=tuple(str(n) for n in doc["model_names"]),  # type: ignore[attr-defined]
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not all(os.path.lexists(root / f) for f in store.files):
        return None
    return store


def build_demo_store(root: Path, *, seed: int = 0) -> DemoStore:
    """Build (or reuse) the demo cold store under ``root``.

    A store already built with the same :data:`DEMO_VERSION` and seed is reused untouched.
    Otherwise the demo's own paths are removed and rewritten; nothing else under ``root`` is
    touched. The version marker is written last, so an interrupted build is redone.

    Args:
        root: directory to build in; created if missing.
        seed: seed for all random weights.

    Raises:
        DemoError: if the store cannot be written.
    """
    root = Path(root)
    previous = _read_marker(root)
    if previous and previous.get("version") == DEMO_VERSION and previous.get("seed") == seed:
        existing = _store_from_marker(root, previous)
        if existing is not None:
            log.info("demo store at %s is up to date (version %d)", root, DEMO_VERSION)
            return existing
    try:
        return _build(root, seed, TINY_LLAMA, previous)
    except OSError as e:
        raise DemoError(
            f"cannot build demo store: {e}",
            path=str(e.filename or root),
            errno=e.errno or errno.EIO,
        ) from e


def _build(
    root: Path, seed: int, shape: TinyLlamaShape, previous: dict[str, object] | None
) -> DemoStore:
    log.info("building demo store at %s (seed %d)", root, seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)
    _remove_owned(root, previous)

    w = _Writer(root)
    sd = llama_state_dict(shape, seed)
    _build_hf_dir(w, sd, shape)
    revision = _build_hub_repo(w, sd, shape)

    gguf_path = root / "gguf/tiny-llama.gguf"
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    write_llama_gguf(gguf_path, sd, shape)
    w.created.add("gguf/tiny-llama.gguf")
    manifest = _build_ollama(w, gguf_path.read_bytes())

    gen = torch.Generator().manual_seed(seed + 1)
    table = torch.randn(shape.vocab_size, shape.hidden_size, generator=gen).to(torch.float16)
    w.write("misc/embeddings.safetensors", _safetensors_bytes({"embeddings": table}))

    names = sorted(
        [
            "hf/tiny-llama",
            hub_model_name(HUB_REPO_DIR, revision),
            ollama_model_name(OLLAMA_HOST, OLLAMA_NAMESPACE, OLLAMA_MODEL, OLLAMA_TAG),
            "gguf/tiny-llama.gguf",
            "misc/embeddings.safetensors",
        ]
    )
    store = DemoStore(
        root=root,
        seed=seed,
        version=DEMO_VERSION,
        hf_dir=root / "hf/tiny-llama",
        hub_repo=root / "hub" / HUB_REPO_DIR,
        hub_revision=revision,
        ollama_root=root / "ollama",
        ollama_manifest=root / manifest,
        gguf_file=gguf_path,
        embeddings_file=root / "misc/embeddings.safetensors",
        files=tuple(sorted(w.created)),
        model_names=tuple(names),
    )
    marker = {
        "version": DEMO_VERSION,
        "seed": seed,
        "hub_revision": revision,
        "ollama_manifest": manifest,
        "files": list(store.files),
        "model_names": list(store.model_names),
    }
    w.write(MARKER, _json_bytes(marker))
    size = sum((root / f).lstat().st_size for f in store.files)
    log.info("demo store built: %d files, %d bytes", len(store.files), size)
    return store
