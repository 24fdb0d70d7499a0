"""Building (or reusing) the demo cold store, and the marker that says what it holds.

The format writers import torch, safetensors, gguf and numpy; they are imported only when a
store is actually built, so importing this package (``tierfs demo --help``) stays light.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

from tierfs.namespace.models import hub_model_name, ollama_model_name
from tierfs.ops.demo.files import Writer
from tierfs.ops.demo.layout import (
    DEMO_VERSION,
    HUB_REPO_DIR,
    MARKER,
    OLLAMA_HOST,
    OLLAMA_MODEL,
    OLLAMA_NAMESPACE,
    OLLAMA_TAG,
    TINY_LLAMA,
    DemoError,
    DemoStore,
    TinyLlamaShape,
)

log = logging.getLogger(__name__)


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

    from tierfs.ops.demo.gguf_writer import write_llama_gguf
    from tierfs.ops.demo.hf import build_hf_dir
    from tierfs.ops.demo.hub import build_hub_repo
    from tierfs.ops.demo.ollama import build_ollama
    from tierfs.ops.demo.weights import (
        embedding_table,
        json_bytes,
        llama_state_dict,
        safetensors_bytes,
    )

    w = Writer(root)
    sd = llama_state_dict(shape, seed)
    build_hf_dir(w, sd, shape)
    revision = build_hub_repo(w, sd, shape)

    gguf_path = root / "gguf/tiny-llama.gguf"
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    write_llama_gguf(gguf_path, sd, shape)
    w.created.add("gguf/tiny-llama.gguf")
    manifest = build_ollama(w, gguf_path.read_bytes())

    table = embedding_table(shape, seed)
    w.write("misc/embeddings.safetensors", safetensors_bytes({"embeddings": table}))

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
    w.write(MARKER, json_bytes(marker))
    size = sum((root / f).lstat().st_size for f in store.files)
    log.info("demo store built: %d files, %d bytes", len(store.files), size)
    return store
