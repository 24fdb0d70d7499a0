"""Recognise model units (HF directories, HF hub snapshots, Ollama models, lone files).

The scanner works on any tree that implements :class:`TreeView`, so the same code runs on a
single real directory (:class:`DirectoryTreeView`) and on tierfs's merged namespace.

Scanning happens in three phases: one walk that lists every real (non-symlink, non-hidden)
directory, a classification pass over those listings that needs no I/O, and a collection pass
that stats only the files that belong to a unit. Symlinks are resolved lexically against the
recorded listings, so a link can never lead the scan outside the scanned subtree.
"""

from __future__ import annotations

import difflib
import errno
import json
import logging
import os
import posixpath
import re
import stat as stat_mod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from tierfs.errors import TierfsError

log = logging.getLogger(__name__)

#: Upper bound on any JSON document (manifest, config, index) the scanner reads.
MAX_JSON_BYTES = 4 * 1024 * 1024
#: Upper bound on a hub ref file; real ones hold a 40-character hash.
MAX_REF_BYTES = 256
#: Symlink chains longer than this are treated as broken (also guards against loops).
MAX_LINK_HOPS = 8
#: Directory depth beyond which the walk stops descending.
MAX_DEPTH = 64

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
LONE_SUFFIXES = (".gguf", ".safetensors")
OLLAMA_DEFAULT_PREFIX = "registry.ollama.ai/library/"
OLLAMA_DEFAULT_HOST = "registry.ollama.ai/"
HUB_MODEL_PREFIX = "models--"
# Hub repos of these types share the cache layout but hold no models; their contents must not
# surface as lone files either.
HUB_OTHER_PREFIXES = ("datasets--", "spaces--")

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
# Files whose names look like weights but that HF training writes next to any checkpoint.
_NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"})


class EntryKind(StrEnum):
    """Type of a directory entry, as seen without following symlinks."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


class ModelKind(StrEnum):
    """Layout a model unit was recognised from."""

    HF_DIR = "hf_dir"
    HF_HUB = "hf_hub"
    OLLAMA = "ollama"
    FILE = "file"


class TreeView(Protocol):
    """Read-only view of a tree addressed by POSIX-style relative paths ("" is the root).

    Every method raises ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) when the
    entry cannot be accessed; ``read_text`` may also raise ``UnicodeDecodeError``.
    """

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        """Entries of directory ``rel`` as (name, kind), without following symlinks."""
        ...

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        """Kind and size in bytes of ``rel``, without following a final symlink."""
        ...

    def readlink(self, rel: str) -> str:
        """Target of symlink ``rel``, verbatim."""
        ...

    def read_text(self, rel: str, limit: int) -> str:
        """At most ``limit`` bytes of file ``rel``, decoded as UTF-8."""
        ...


def _kind_of_mode(mode: int) -> EntryKind:
    if stat_mod.S_ISREG(mode):
        return EntryKind.FILE
    if stat_mod.S_ISDIR(mode):
        return EntryKind.DIR
    if stat_mod.S_ISLNK(mode):
        return EntryKind.SYMLINK
    return EntryKind.OTHER


class DirectoryTreeView:
    """:class:`TreeView` over one real directory.

    Args:
        root: the directory every relative path is resolved against.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _abs(self, rel: str) -> str:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise FileNotFoundError(errno.ENOENT, "path escapes the tree", rel)
        return os.path.join(self.root, rel) if rel else os.fspath(self.root)

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        out: list[tuple[str, EntryKind]] = []
        with os.scandir(self._abs(rel)) as it:
            for entry in it:
                # DirEntry answers these from d_type, so listing costs no stat per entry.
                if entry.is_symlink():
                    kind = EntryKind.SYMLINK
                elif entry.is_dir(follow_symlinks=False):
                    kind = EntryKind.DIR
                elif entry.is_file(follow_symlinks=False):
                    kind = EntryKind.FILE
                else:
                    kind = EntryKind.OTHER
                out.append((entry.name, kind))
        return out

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        st = os.lstat(self._abs(rel))
        return _kind_of_mode(st.st_mode), st.st_size

    def readlink(self, rel: str) -> str:
        return os.readlink(self._abs(rel))

    def read_text(self, rel: str, limit: int) -> str:
        with open(self._abs(rel), "rb") as f:
            return f.read(limit).decode("utf-8")


@dataclass(frozen=True, slots=True)
class Model:
    """One unit tierfs can list, promote and pin.

    Attributes:
        name: unique display name (see :func:`scan_models` for the naming rules).
        kind: layout the unit was recognised from.
        root: relative path identifying the unit: the directory (hf_dir), the snapshot
            directory (hf_hub), the manifest (ollama) or the file itself (file).
        files: sorted, deduplicated relative paths of the regular files holding its bytes.
        size: total size in bytes of ``files``.
        links: symlinks that belong to the unit (hub snapshot entries), sorted.
        aliases: other names :func:`find_model` accepts for this unit.
        revision: commit hash of a hub snapshot.
        refs: hub refs (``main``, ``pr/1``...) that point at this snapshot.
    """

    name: str
    kind: ModelKind
    root: str
    files: tuple[str, ...]
    size: int
    links: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    revision: str | None = None
    refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelProblem:
    """Something in the tree that looks like a model unit but is malformed."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Outcome of :func:`scan_models`: models sorted by name, problems sorted by path."""

    models: tuple[Model, ...]
    problems: tuple[ModelProblem, ...] = field(default_factory=tuple)


class ModelError(TierfsError):
    """Base of errors raised by this module."""


class ModelNotFoundError(ModelError):
    """No model matches the requested name; ``candidates`` lists near names."""

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        hint = f"; did you mean: {', '.join(candidates)}" if candidates else ""
        super().__init__(f"no model named {name!r}{hint}", path=name, errno=errno.ENOENT)
        self.candidates = tuple(candidates)


class AmbiguousModelError(ModelError):
    """Several models match the requested name; ``candidates`` lists all of them."""

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        super().__init__(
            f"model name {name!r} is ambiguous: {', '.join(candidates)}",
            path=name,
            errno=errno.EINVAL,
        )
        self.candidates = tuple(candidates)


class _UnitBroken(Exception):
    """Internal: the unit under construction must be dropped with this problem."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.problem = ModelProblem(path, message)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def _is_weight_name(name: str) -> bool:
    return (name.endswith(WEIGHT_SUFFIXES) and name not in _NOT_WEIGHTS) or name.endswith(
        ".index.json"
    )


def _is_hf_dir(entries: Mapping[str, EntryKind]) -> bool:
    return "config.json" in entries and any(_is_weight_name(n) for n in entries)


def hub_repo_id(dirname: str) -> str:
    """Repo id (``org/name``) of a hub cache directory name such as ``models--org--name``."""
    body = dirname.split("--", 1)[1] if "--" in dirname else dirname
    return body.replace("--", "/")


def hub_model_name(repo_dirname: str, revision: str) -> str:
    """Name :func:`scan_models` gives a hub snapshot: ``org/name@<first 12 of revision>``."""
    return f"{hub_repo_id(repo_dirname)}@{revision[:12]}"


def ollama_model_name(host: str, namespace: str, model: str, tag: str) -> str:
    """Name :func:`scan_models` gives an Ollama manifest, shortened the way ollama prints it."""
    full = f"{host}/{namespace}/{model}:{tag}"
    if full.startswith(OLLAMA_DEFAULT_PREFIX):
        return full[len(OLLAMA_DEFAULT_PREFIX) :]
    if full.startswith(OLLAMA_DEFAULT_HOST):
        return full[len(OLLAMA_DEFAULT_HOST) :]
    return full


class _Scanner:
    def __init__(self, view: TreeView, root: str) -> None:
        self.view = view
        self.root = root.strip("/")
        self.listing: dict[str, dict[str, EntryKind]] = {}
        self.problems: list[ModelProblem] = []
        self.models: list[Model] = []
        self._sizes: dict[str, int] = {}

    # -- phase 1: walk ------------------------------------------------------------------

    def walk(self) -> None:
        stack: list[tuple[str, int]] = [(self.root, 0)]
        while stack:
            rel, depth = stack.pop()
            try:
                entries = self.view.listdir(rel)
            except OSError as e:
                self.problems.append(ModelProblem(rel, f"cannot list directory: {e}"))
                continue
            names = {name: kind for name, kind in entries}
            self.listing[rel] = names
            if depth >= MAX_DEPTH:
                log.warning("not descending below %s: deeper than %d levels", rel, MAX_DEPTH)
                continue
            for name, kind in names.items():
                # Hidden dirs hold VCS objects, download metadata and lock files; descending
                # would both cost time and surface duplicate copies of weights.
                if kind is EntryKind.DIR and not name.startswith("."):
                    stack.append((_join(rel, name), depth + 1))

    # -- helpers ------------------------------------------------------------------------

    def size_of(self, rel: str) -> int:
        cached = self._sizes.get(rel)
        if cached is not None:
            return cached
        try:
            kind, size = self.view.stat(rel)
        except OSError as e:
            raise _UnitBroken(rel, f"cannot stat: {e}") from e
        if kind is not EntryKind.FILE:
            raise _UnitBroken(rel, "is no longer a regular file")
        self._sizes[rel] = size
        return size

    def resolve(self, rel: str) -> str:
        """Follow ``rel`` to a regular file inside the scanned tree, or raise _UnitBroken."""
        origin = rel
        for _ in range(MAX_LINK_HOPS):
            parent, name = _split(rel)
            entries = self.listing.get(parent)
            if entries is None:
                raise _UnitBroken(
                    origin, f"symlink target {rel!r} is outside the scanned tree or hidden"
                )
            kind = entries.get(name)
            if kind is None:
                what = "symlink target" if rel != origin else "file"
                raise _UnitBroken(origin, f"{what} {rel!r} does not exist")
            if kind is EntryKind.FILE:
                return rel
            if kind is not EntryKind.SYMLINK:
                raise _UnitBroken(origin, f"{rel!r} is not a regular file")
            try:
                target = self.view.readlink(rel)
            except OSError as e:
                raise _UnitBroken(origin, f"cannot read symlink {rel!r}: {e}") from e
            if target.startswith("/"):
                raise _UnitBroken(origin, f"absolute symlink target {target!r} leaves the tree")
            joined = posixpath.normpath(posixpath.join(parent, target))
            if joined == ".." or joined.startswith("../"):
                raise _UnitBroken(origin, f"symlink target {target!r} leaves the tree")
            rel = "" if joined == "." else joined
        raise _UnitBroken(origin, f"more than {MAX_LINK_HOPS} symlink hops")

    def read_json(self, rel: str) -> Any:
        target = self.resolve(rel)
        size = self.size_of(target)
        if size > MAX_JSON_BYTES:
            raise _UnitBroken(rel, f"JSON document is {size} bytes, over {MAX_JSON_BYTES}")
        try:
            text = self.view.read_text(target, MAX_JSON_BYTES)
        except (OSError, UnicodeDecodeError) as e:
            raise _UnitBroken(rel, f"cannot read: {e}") from e
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise _UnitBroken(rel, f"invalid JSON: {e}") from e

    def add(self, model: Model) -> None:
        log.debug("found %s model %s at %s", model.kind, model.name, model.root)
        self.models.append(model)

    # -- phase 2: classify --------------------------------------------------------------

    def classify(self) -> None:
        lone: list[str] = []
        # "claimed" marks directories inside an HF model directory: their files belong to
        # that unit, but they may still hold nested units of their own.
        stack: list[tuple[str, bool]] = [(self.root, False)]
        while stack:
            rel, claimed = stack.pop()
            entries = self.listing.get(rel)
            if entries is None:
                continue
            name = _split(rel)[1]
            if entries.get("manifests") is EntryKind.DIR and entries.get("blobs") is EntryKind.DIR:
                self.ollama_store(rel)
                continue
            if name.startswith(HUB_MODEL_PREFIX) and entries.get("snapshots") is EntryKind.DIR:
                self.hub_repo(rel)
                continue
            if name.startswith(HUB_OTHER_PREFIXES) and entries.get("snapshots") is EntryKind.DIR:
                continue
            if _is_hf_dir(entries):
                self.hf_dir(rel)
                claimed = True
            for child, kind in entries.items():
                path = _join(rel, child)
                if kind is EntryKind.DIR:
                    stack.append((path, claimed))
                elif not claimed and kind is EntryKind.FILE and child.endswith(LONE_SUFFIXES):
                    lone.append(path)
        for path in lone:
            try:
                self.add(Model(path, ModelKind.FILE, path, (path,), self.size_of(path)))
            except _UnitBroken as e:
                self.problems.append(e.problem)

    # -- phase 3: per-kind collection ---------------------------------------------------

    def hf_dir(self, rel: str) -> None:
        try:
            config = self.read_json(_join(rel, "config.json"))
            if not isinstance(config, dict):
                raise _UnitBroken(_join(rel, "config.json"), "config.json is not a JSON object")
            files: set[str] = set()
            links: set[str] = set()
            self._collect_dir(rel, files, links, top=True)
            size = sum(self.size_of(f) for f in files)
        except _UnitBroken as e:
            self.problems.append(e.problem)
            return
        name = rel or "."
        self.add(Model(name, ModelKind.HF_DIR, rel, tuple(sorted(files)), size))

    def _collect_dir(self, rel: str, files: set[str], links: set[str], *, top: bool) -> None:
        entries = self.listing.get(rel, {})
        if not top and _is_hf_dir(entries):
            # A nested model directory is its own unit, found by classify().
            return
        for name, kind in entries.items():
            path = _join(rel, name)
            if kind is EntryKind.FILE:
                files.add(path)
            elif kind is EntryKind.SYMLINK:
                links.add(path)
                files.add(self.resolve(path))
            elif kind is EntryKind.DIR and path in self.listing:
                self._collect_dir(path, files, links, top=False)

    def hub_repo(self, rel: str) -> None:
        repo_dir = _split(rel)[1]
        refs = self._hub_refs(rel)
        snapshots = _join(rel, "snapshots")
        for rev, kind in sorted(self.listing.get(snapshots, {}).items()):
            snap = _join(snapshots, rev)
            if kind is not EntryKind.DIR or snap not in self.listing:
                continue
            files: set[str] = set()
            links: set[str] = set()
            try:
                self._collect_snapshot(snap, files, links)
                if not files:
                    log.debug("skipping empty hub snapshot %s", snap)
                    continue
                size = sum(self.size_of(f) for f in files)
            except _UnitBroken as e:
                self.problems.append(e.problem)
                continue
            repo_id = hub_repo_id(repo_dir)
            ref_names = tuple(sorted(r for r, target in refs.items() if target == rev))
            aliases = [f"{repo_id}@{rev}"] + [f"{repo_id}@{r}" for r in ref_names]
            if "main" in ref_names:
                aliases.append(repo_id)
            model = Model(
                name=hub_model_name(repo_dir, rev),
                kind=ModelKind.HF_HUB,
                root=snap,
                files=tuple(sorted(files)),
                size=size,
                links=tuple(sorted(links)),
                aliases=tuple(aliases),
                revision=rev,
                refs=ref_names,
            )
            self.add(model)

    def _hub_refs(self, repo: str) -> dict[str, str]:
        refs: dict[str, str] = {}
        stack = [_join(repo, "refs")]
        while stack:
            rel = stack.pop()
            for name, kind in self.listing.get(rel, {}).items():
                path = _join(rel, name)
                if kind is EntryKind.DIR:
                    stack.append(path)
                    continue
                if kind is not EntryKind.FILE:
                    # Reading through a symlink could leave the tree; real refs are plain files.
                    self.problems.append(ModelProblem(path, "hub ref is not a regular file"))
                    continue
                try:
                    value = self.view.read_text(path, MAX_REF_BYTES).strip()
                except (OSError, UnicodeDecodeError) as e:
                    self.problems.append(ModelProblem(path, f"cannot read hub ref: {e}"))
                    continue
                ref_name = path[len(repo) + len("/refs/") :]
                refs[ref_name] = value
        return refs

    def _collect_snapshot(self, rel: str, files: set[str], links: set[str]) -> None:
        for name, kind in self.listing.get(rel, {}).items():
            path = _join(rel, name)
            if kind is EntryKind.SYMLINK:
                links.add(path)
                files.add(self.resolve(path))
            elif kind is EntryKind.FILE:
                # Caches on filesystems without symlinks hold plain copies instead.
                files.add(path)
            elif kind is EntryKind.DIR and path in self.listing:
                self._collect_snapshot(path, files, links)

    def ollama_store(self, rel: str) -> None:
        manifests = _join(rel, "manifests")
        stack: list[tuple[str, tuple[str, ...]]] = [(manifests, ())]
        while stack:
            d, parts = stack.pop()
            for name, kind in self.listing.get(d, {}).items():
                path = _join(d, name)
                if name.startswith("."):
                    continue
                if kind is EntryKind.DIR and len(parts) < 3:
                    stack.append((path, (*parts, name)))
                elif len(parts) == 3 and kind in (EntryKind.FILE, EntryKind.SYMLINK):
                    host, namespace, model = parts
                    try:
                        self.add(self._ollama_manifest(rel, path, host, namespace, model, name))
                    except _UnitBroken as e:
                        self.problems.append(e.problem)
                else:
                    self.problems.append(
                        ModelProblem(
                            path, "unexpected entry; manifests live at <host>/<ns>/<model>/<tag>"
                        )
                    )

    def _ollama_manifest(
        self, store: str, path: str, host: str, namespace: str, model: str, tag: str
    ) -> Model:
        doc = self.read_json(path)
        if not isinstance(doc, dict):
            raise _UnitBroken(path, "manifest is not a JSON object")
        layers = doc.get("layers")
        if not isinstance(layers, list) or not layers:
            raise _UnitBroken(path, "manifest has no 'layers' list")
        descriptors: list[tuple[str, object]] = [(f"layers[{i}]", x) for i, x in enumerate(layers)]
        if "config" in doc:
            descriptors.append(("config", doc["config"]))
        files = {self.resolve(path)}
        for where, desc in descriptors:
            if not isinstance(desc, dict):
                raise _UnitBroken(path, f"{where} is not an object")
            digest = desc.get("digest")
            m = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
            if m is None:
                raise _UnitBroken(path, f"{where} has a malformed digest {digest!r}")
            blob = _join(store, f"blobs/sha256-{m.group(1)}")
            try:
                target = self.resolve(blob)
            except _UnitBroken as e:
                raise _UnitBroken(path, f"{where}: blob {digest} is missing ({e})") from e
            declared = desc.get("size")
            actual = self.size_of(target)
            if isinstance(declared, int) and declared != actual:
                raise _UnitBroken(
                    path, f"{where}: blob {digest} is {actual} bytes, manifest says {declared}"
                )
            files.add(target)
        full = f"{host}/{namespace}/{model}:{tag}"
        name = ollama_model_name(host, namespace, model, tag)
        aliases = [full] if full != name else []
        if tag == "latest":
            # ollama itself treats a bare model name as its :latest tag.
            aliases.append(name[: -len(":latest")])
        return Model(
            name=name,
            kind=ModelKind.OLLAMA,
            root=path,
            files=tuple(sorted(files)),
            size=sum(self.size_of(f) for f in files),
            aliases=tuple(aliases),
        )

    # -- finish -------------------------------------------------------------------------

    def result(self) -> ScanResult:
        by_name: dict[str, list[Model]] = {}
        for m in self.models:
            by_name.setdefault(m.name, []).append(m)
        final: list[Model] = []
        taken = {name for name, group in by_name.items() if len(group) == 1}
        for name, group in by_name.items():
            if len(group) == 1:
                final.append(group[0])
                continue
            # Same name from different places (two caches holding one repo): qualify every one
            # of them by its root, and keep the bare name as an alias that find_model reports
            # as ambiguous.
            for m in sorted(group, key=lambda m: m.root):
                new = f"{name}~{m.root}"
                n = 2
                while new in taken:
                    new = f"{name}~{m.root}~{n}"
                    n += 1
                taken.add(new)
                final.append(
                    Model(
                        name=new,
                        kind=m.kind,
                        root=m.root,
                        files=m.files,
                        size=m.size,
                        links=m.links,
                        aliases=(name, *m.aliases),
                        revision=m.revision,
                        refs=m.refs,
                    )
                )
        final.sort(key=lambda m: m.name)
        problems = sorted(set(self.problems), key=lambda p: (p.path, p.message))
        return ScanResult(tuple(final), tuple(problems))


def scan_models(view: TreeView, root: str = "") -> ScanResult:
    """Find every model unit under ``root`` of ``view``.

    Naming: an HF directory and a lone file are named by their relative path (``"."`` for the
    tree root); a hub snapshot ``org/name@<rev[:12]>`` (aliases: full revision, each ref that
    points at it, and bare ``org/name`` for ``refs/main``); an Ollama manifest
    ``host/ns/model:tag`` with ``registry.ollama.ai/library/`` dropped (alias: bare model for
    ``:latest``). Colliding names are qualified as ``name~root``.

    Malformed units (bad JSON, missing blobs, symlinks that leave the tree...) are left out and
    reported in ``problems``; they never abort the scan. Hidden directories are skipped.

    Args:
        view: the tree to scan.
        root: relative path of the subtree to scan; links out of it count as leaving the tree.

    Raises:
        ModelError: if ``root`` itself cannot be listed.
    """
    scanner = _Scanner(view, root)
    scanner.walk()
    if scanner.root not in scanner.listing:
        raise ModelError(f"cannot list {root!r}", path=root, errno=errno.ENOENT)
    scanner.classify()
    result = scanner.result()
    log.info(
        "scanned %r: %d models, %d problems, %d directories",
        root,
        len(result.models),
        len(result.problems),
        len(scanner.listing),
    )
    return result


def scan_directory(path: Path) -> ScanResult:
    """Shorthand for ``scan_models(DirectoryTreeView(path))``.

    Raises:
        ModelError: if ``path`` cannot be listed.
    """
    return scan_models(DirectoryTreeView(path))


def find_model(models: Iterable[Model], name: str) -> Model:
    """Resolve a user-typed model name.

    Tries, in order: an exact name, an exact alias, then a prefix of names and aliases. A step
    that matches exactly one model wins; one that matches several raises.

    Args:
        models: the models to search, e.g. ``scan_models(...).models``.
        name: what the user typed.

    Raises:
        AmbiguousModelError: several models match; ``candidates`` names them.
        ModelNotFoundError: nothing matches; ``candidates`` holds up to 5 near names.
    """
    pool = list(models)
    if not name.strip():
        raise ModelNotFoundError(name, [])
    for match in (
        lambda m: m.name == name,
        lambda m: name in m.aliases,
        lambda m: any(k.startswith(name) for k in (m.name, *m.aliases)),
    ):
        hits = [m for m in pool if match(m)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise AmbiguousModelError(name, sorted(m.name for m in hits))
    keys: dict[str, str] = {}
    for m in pool:
        for k in (m.name, *m.aliases):
            keys.setdefault(k, m.name)
    near = difflib.get_close_matches(name, list(keys), n=10, cutoff=0.5)
    near += [k for k in keys if name and name in k]
    candidates = list(dict.fromkeys(keys[k] for k in near))[:5]
    raise ModelNotFoundError(name, candidates)


def models_by_file(models: Iterable[Model]) -> Mapping[str, tuple[str, ...]]:
    """Map every file and symlink of every model to the sorted names of the models using it.

    An Ollama blob shared by several manifests maps to all of them.
    """
    index: dict[str, set[str]] = {}
    for m in models:
        for path in (*m.files, *m.links):
            index.setdefault(path, set()).add(m.name)
    return {path: tuple(sorted(names)) for path, names in index.items()}
