"""The demo cold store: one tiny, randomly initialised but real Llama model in every layout
tierfs recognises (see `layout`), deterministic for a seed, about 2.5 MiB.

Written with torch, safetensors and gguf only (no transformers). One module per format
(`hf`, `hub`, `ollama`, `gguf_writer`) over the weights (`weights`); `store` builds or
reuses a store. Importing this package imports none of the heavy libraries: `store`
loads the writers only when it builds.
"""

from tierfs.ops.demo.layout import (
    DEMO_VERSION,
    HF_SHARDS,
    HUB_REPO_DIR,
    HUB_REPO_ID,
    MARKER,
    TINY_LLAMA,
    DemoError,
    DemoStore,
    TinyLlamaShape,
)
from tierfs.ops.demo.store import build_demo_store

__all__ = [
    "DEMO_VERSION",
    "HF_SHARDS",
    "HUB_REPO_DIR",
    "HUB_REPO_ID",
    "MARKER",
    "TINY_LLAMA",
    "DemoError",
    "DemoStore",
    "TinyLlamaShape",
    "build_demo_store",
]
