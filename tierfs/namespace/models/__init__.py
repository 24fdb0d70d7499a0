"""Model recognition: which units (HF directories, HF hub snapshots, Ollama models, lone
files) a tree holds, what they are called, and finding one by a typed name.

One module per concern: the tree a scan reads (`tree`), what it finds (`units`), the
per-scan state the layouts share (`context`), one module per layout (`hf_dir`, `hub`,
`ollama`, `lone`), naming (`naming`), the scan itself (`scan`) and lookup (`lookup`).
Imports only the shared modules at the package root; the merged namespace is adapted to
`TreeView` by `tierfs.namespace.inventory`, which joins the two.
"""

from tierfs.namespace.models.context import MAX_JSON_BYTES
from tierfs.namespace.models.lookup import find_model, models_by_file
from tierfs.namespace.models.naming import hub_model_name, ollama_model_name
from tierfs.namespace.models.scan import scan_directory, scan_models
from tierfs.namespace.models.tree import DirectoryTreeView, EntryKind, TreeView
from tierfs.namespace.models.units import (
    AmbiguousModelError,
    Model,
    ModelError,
    ModelKind,
    ModelNotFoundError,
    ModelProblem,
    ScanResult,
)

__all__ = [
    "MAX_JSON_BYTES",
    "AmbiguousModelError",
    "DirectoryTreeView",
    "EntryKind",
    "Model",
    "ModelError",
    "ModelKind",
    "ModelNotFoundError",
    "ModelProblem",
    "ScanResult",
    "TreeView",
    "find_model",
    "hub_model_name",
    "models_by_file",
    "ollama_model_name",
    "scan_directory",
    "scan_models",
]
