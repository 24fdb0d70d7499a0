"""The demo's Ollama store: a manifest whose layers (GGUF, template, params) are blobs."""

from __future__ import annotations

import hashlib
import json

from tierfs.ops.demo.files import Writer
from tierfs.ops.demo.layout import OLLAMA_HOST, OLLAMA_MODEL, OLLAMA_NAMESPACE, OLLAMA_TAG


def build_ollama(w: Writer, gguf_bytes: bytes) -> str:
    """Write the Ollama store around ``gguf_bytes``; returns the manifest's path."""

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
