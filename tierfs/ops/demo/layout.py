"""What the demo store holds: its layout, names, version and model shape (no heavy imports).

The same weights appear in every layout tierfs recognises::

    hf/tiny-llama/                      HF model directory, two safetensors shards + index
    hub/models--tierfs-demo--tiny-llama HF hub cache repo with one snapshot
    ollama/                             Ollama store: manifest, GGUF model layer, template...
    gguf/tiny-llama.gguf                lone GGUF that llama.cpp loads and generates from
    misc/embeddings.safetensors         lone safetensors file (an unrelated embedding table)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tierfs.errors import TierfsError

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
        """Width of one attention head."""
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
