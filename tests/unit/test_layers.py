"""The import rules of tierfs's layers, as each subpackage's docstring states them.

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tierfs"
# The modules at the package root hold the facts every layer shares.
ROOT = "root"
# What each layer may import besides itself and the root.
ALLOWED: dict[str, set[str]] = {
    ROOT: set(),
    "namespace": set(),
    "storage": {"namespace"},
    "fuse": {"namespace", "storage"},
    "ops": {"namespace", "storage"},
    "control": {"namespace", "storage", "fuse", "ops"},
    "daemon": {"namespace", "storage", "fuse", "ops", "control"},
}
# Imports that break the rules on purpose, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # The process entry point runs the CLI.
    ("tierfs.__main__", "control"): "the entry point",
    # The commands that start, stop or stand in for a daemon (lazily).
    ("tierfs.control.cli.mount", "daemon"): "tierfs mount and unmount",
    ("tierfs.control.cli.health", "daemon"): "the offline fsck holds the state directory",
}


def module_name(path: Path) -> str:
    """The dotted name of a file of the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The subpackage a module belongs to, or ROOT."""
    parts = module.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return ROOT


def imported(path: Path) -> set[str]:
    """The tierfs modules a file imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tierfs")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update([node.module] if node.module.split(".")[0] == "tierfs" else [])
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_layer_is_known() -> None:
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert layers == set(ALLOWED) - {ROOT}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_its_layer_may(path: Path) -> None:
    module = module_name(path)
    layer = layer_of(module)
    for target in sorted(imported(path)):
        other = layer_of(target)
        if other in (layer, ROOT) or other in ALLOWED[layer]:
            continue
        assert (module, other) in EXCEPTIONS, f"{module} ({layer}) imports {target} ({other})"


def test_model_recognition_does_not_import_the_merge() -> None:
    # The merge and the models meet only in the inventory.
    for path in sorted((PACKAGE / "namespace" / "models").glob("*.py")):
        outside = {
            t for t in imported(path) if t.startswith("tierfs.namespace.") and ".models" not in t
        }
        assert not outside, f"{module_name(path)} imports {sorted(outside)}"


def test_the_merge_does_not_import_model_recognition() -> None:
    for name in ("merge", "nodes", "identity"):
        targets = imported(PACKAGE / "namespace" / f"{name}.py")
        assert not {t for t in targets if t.startswith("tierfs.namespace.models")}, name


def test_every_exception_is_still_needed() -> None:
    used = {
        (module_name(path), layer_of(target))
        for path in MODULES
        for target in imported(path)
        if layer_of(target) not in (layer_of(module_name(path)), ROOT)
    }
    assert set(EXCEPTIONS) <= used, sorted(set(EXCEPTIONS) - used)
