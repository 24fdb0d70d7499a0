"""Unit tests for tierfs.namespace.models, on a pyfakefs tree (and an in-memory TreeView)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tierfs.errors import TierfsError
from tierfs.namespace.models import (
    MAX_JSON_BYTES,
    AmbiguousModelError,
    DirectoryTreeView,
    EntryKind,
    Model,
    ModelError,
    ModelKind,
    ModelNotFoundError,
    ScanResult,
    find_model,
    models_by_file,
    scan_directory,
    scan_models,
)

ROOT = Path("/store")
REV_A = "a" * 40
REV_B = "b" * 40


@pytest.fixture
def root(fs: FakeFilesystem) -> Iterator[Path]:
    fs.create_dir(ROOT)
    yield ROOT


def put(path: Path, data: bytes | str = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def by_name(result: ScanResult) -> dict[str, Model]:
    return {m.name: m for m in result.models}


def problem_paths(result: ScanResult) -> list[str]:
    return [p.path for p in result.problems]


# -- HF model directories ------------------------------------------------------------------


def make_hf_dir(d: Path) -> None:
    put(d / "config.json", json.dumps({"architectures": ["LlamaForCausalLM"]}))
    put(d / "model-00001-of-00002.safetensors", b"a" * 100)
    put(d / "model-00002-of-00002.safetensors", b"b" * 50)
    put(d / "model.safetensors.index.json", "{}")
    put(d / "tokenizer.json", "{}")


def test_hf_dir_lists_all_files_including_subdirs_but_not_hidden(root: Path) -> None:
    d = root / "hf" / "llama"
    make_hf_dir(d)
    put(d / "original" / "consolidated.00.pth", b"c" * 7)
    put(d / ".cache" / "huggingface" / "x.metadata", b"m")

    result = scan_directory(root)

    assert result.problems == ()
    (m,) = result.models
    assert m.name == "hf/llama"
    assert m.kind is ModelKind.HF_DIR
    assert m.root == "hf/llama"
    assert m.files == (
        "hf/llama/config.json",
        "hf/llama/model-00001-of-00002.safetensors",
        "hf/llama/model-00002-of-00002.safetensors",
        "hf/llama/model.safetensors.index.json",
        "hf/llama/original/consolidated.00.pth",
        "hf/llama/tokenizer.json",
    )
    config_size = len(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert m.size == config_size + 100 + 50 + 2 + 7 + 2


def test_hf_dir_at_tree_root_is_named_dot(root: Path) -> None:
    make_hf_dir(root)
    (m,) = scan_directory(root).models
    assert (m.name, m.root) == (".", "")


def test_nested_hf_dirs_are_separate_units(root: Path) -> None:
    make_hf_dir(root / "run")
    make_hf_dir(root / "run" / "checkpoint-100")

    models = by_name(scan_directory(root))

    assert set(models) == {"run", "run/checkpoint-100"}
    assert not any(f.startswith("run/checkpoint-100/") for f in models["run"].files)
    assert len(models["run/checkpoint-100"].files) == 5


def test_config_without_weights_is_no_unit_and_bare_weights_are_lone_files(root: Path) -> None:
    put(root / "tok" / "config.json", "{}")
    put(root / "tok" / "tokenizer.json", "{}")
    put(root / "shards" / "a.safetensors", b"1234")
    put(root / "shards" / "b.bin", b"12")  # .bin alone is too ambiguous to be a unit

    result = scan_directory(root)

    assert [(m.name, m.kind, m.files, m.size) for m in result.models] == [
        ("shards/a.safetensors", ModelKind.FILE, ("shards/a.safetensors",), 4)
    ]


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_hf_dir_with_bad_config_is_a_problem_not_a_unit(
    root: Path, config: str | bytes, needle: str
) -> None:
    make_hf_dir(root / "bad")
    put(root / "bad" / "config.json", config)
    make_hf_dir(root / "good")

    result = scan_directory(root)

    # The broken directory's weights must not resurface as lone files.
    assert [m.name for m in result.models] == ["good"]
    (p,) = result.problems
    assert p.path == "bad/config.json"
    assert needle in p.message


def test_hf_dir_with_oversized_config_is_rejected_without_reading_it(
    root: Path, fs: FakeFilesystem
) -> None:
    put(root / "big" / "model.safetensors", b"w")
    fs.create_file(root / "big" / "config.json", st_size=MAX_JSON_BYTES + 1)
    (p,) = scan_directory(root).problems
    assert p.path == "big/config.json"
    assert "over" in p.message


def test_hf_dir_symlink_inside_tree_is_followed(root: Path) -> None:
    make_hf_dir(root / "m")
    put(root / "shared" / "weights.bin", b"w" * 9)
    link(root / "m" / "pytorch_model.bin", "../shared/weights.bin")

    models = by_name(scan_directory(root))

    assert "shared/weights.bin" in models["m"].files
    assert "m/pytorch_model.bin" not in models["m"].files


# -- HF hub cache ---------------------------------------------------------------------------


def make_hub_repo(cache: Path, repo_dir: str = "models--org--tiny") -> Path:
    repo = cache / repo_dir
    put(repo / "blobs" / "cfg1", b"c" * 10)
    put(repo / "blobs" / "cfg2", b"C" * 11)
    put(repo / "blobs" / "weights", b"w" * 1000)
    put(repo / "blobs" / "tok", b"t" * 5)
    put(repo / "refs" / "main", REV_B + "\n")
    put(repo / "refs" / "pr" / "1", REV_A)
    sa = repo / "snapshots" / REV_A
    link(sa / "config.json", "../../blobs/cfg1")
    link(sa / "model.safetensors", "../../blobs/weights")
    sb = repo / "snapshots" / REV_B
    link(sb / "config.json", "../../blobs/cfg2")
    link(sb / "model.safetensors", "../../blobs/weights")
    link(sb / "tokenizer" / "tok.json", "../../../blobs/tok")
    return repo


def test_hub_repo_gives_one_model_per_snapshot(root: Path) -> None:
    make_hub_repo(root / "hub")

    result = scan_directory(root)

    assert result.problems == ()
    models = by_name(result)
    assert set(models) == {f"org/tiny@{'a' * 12}", f"org/tiny@{'b' * 12}"}
    a = models[f"org/tiny@{'a' * 12}"]
    b = models[f"org/tiny@{'b' * 12}"]
    base = "hub/models--org--tiny"
    assert a.kind is ModelKind.HF_HUB
    assert a.root == f"{base}/snapshots/{REV_A}"
    assert a.files == (f"{base}/blobs/cfg1", f"{base}/blobs/weights")
    assert a.size == 1010
    assert a.links == (
        f"{base}/snapshots/{REV_A}/config.json",
        f"{base}/snapshots/{REV_A}/model.safetensors",
    )
    assert (a.revision, a.refs) == (REV_A, ("pr/1",))
    assert b.files == (f"{base}/blobs/cfg2", f"{base}/blobs/tok", f"{base}/blobs/weights")
    assert b.size == 1016
    assert f"{base}/snapshots/{REV_B}/tokenizer/tok.json" in b.links
    assert b.refs == ("main",)
    assert "org/tiny" in b.aliases and "org/tiny" not in a.aliases
    assert f"org/tiny@{REV_A}" in a.aliases and "org/tiny@pr/1" in a.aliases


def test_hub_repo_without_org_and_copied_files(root: Path) -> None:
    snap = root / "models--gpt2" / "snapshots" / REV_A
    put(snap / "model.safetensors", b"z" * 3)  # caches without symlink support copy files

    (m,) = scan_directory(root).models

    assert m.name == f"gpt2@{'a' * 12}"
    assert m.files == (f"models--gpt2/snapshots/{REV_A}/model.safetensors",)
    assert m.links == ()


def test_hub_dataset_repos_are_ignored(root: Path) -> None:
    snap = root / "datasets--org--data" / "snapshots" / REV_A
    put(root / "datasets--org--data" / "blobs" / "x", b"1")
    link(snap / "data.safetensors", "../../blobs/x")
    assert scan_directory(root).models == ()


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("../../blobs/gone", "does not exist"),
        ("../../../../../etc/passwd", "leaves the tree"),
        ("/etc/passwd", "absolute"),
        ("../../blobs", "not a regular file"),
        ("loop", "symlink hops"),
    ],
)
def test_hub_broken_links_drop_only_that_snapshot(root: Path, target: str, needle: str) -> None:
    make_hub_repo(root)
    bad = root / "models--org--tiny" / "snapshots" / REV_A / "loop"
    if target == "loop":
        link(bad, "loop")
    else:
        link(bad, target)

    result = scan_directory(root)

    assert [m.name for m in result.models] == [f"org/tiny@{'b' * 12}"]
    (p,) = result.problems
    assert p.path == f"models--org--tiny/snapshots/{REV_A}/loop"
    assert needle in p.message


def test_link_out_of_scanned_subtree_counts_as_leaving(root: Path) -> None:
    make_hub_repo(root / "inner")
    put(root / "outside", b"o")
    link(root / "inner" / "models--org--tiny" / "snapshots" / REV_A / "x", "../../../../outside")

    whole = scan_models(DirectoryTreeView(root))
    sub = scan_models(DirectoryTreeView(root), "inner")

    assert len(whole.models) == 2 and whole.problems == ()
    assert len(sub.models) == 1
    assert "outside the scanned tree" in sub.problems[0].message


def test_same_repo_in_two_caches_gets_qualified_names(root: Path) -> None:
    make_hub_repo(root / "c1")
    make_hub_repo(root / "c2")

    result = scan_directory(root)

    names = [m.name for m in result.models]
    assert len(names) == len(set(names)) == 4
    plain = f"org/tiny@{'b' * 12}"
    assert f"{plain}~c1/models--org--tiny/snapshots/{REV_B}" in names
    with pytest.raises(AmbiguousModelError) as e:
        find_model(result.models, plain)
    assert len(e.value.candidates) == 2


# -- Ollama -----------------------------------------------------------------------------------


def blob(store: Path, data: bytes) -> dict[str, object]:
    hexd = hashlib.sha256(data).hexdigest()
    put(store / "blobs" / f"sha256-{hexd}", data)
    return {"mediaType": "x", "digest": f"sha256:{hexd}", "size": len(data)}


def manifest(store: Path, name: str, doc: object) -> None:
    put(store / "manifests" / name, doc if isinstance(doc, str) else json.dumps(doc))


def good_manifest(store: Path, weights: bytes = b"GGUF" * 10) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "config": blob(store, b'{"model_format":"gguf"}'),
        "layers": [blob(store, weights), blob(store, b"{{ .Prompt }}")],
    }


def test_ollama_models_share_blobs_and_get_ollama_style_names(root: Path) -> None:
    store = root / "ollama"
    manifest(store, "registry.ollama.ai/library/tinyllama/latest", good_manifest(store))
    manifest(store, "registry.ollama.ai/library/tinyllama/chat", good_manifest(store))
    manifest(store, "registry.ollama.ai/someone/mix/v1", good_manifest(store, b"other"))
    manifest(store, "hf.co/org/repo/Q4_K_M", good_manifest(store, b"other"))

    result = scan_directory(root)

    assert result.problems == ()
    models = by_name(result)
    assert set(models) == {
        "tinyllama:latest",
        "tinyllama:chat",
        "someone/mix:v1",
        "hf.co/org/repo:Q4_K_M",
    }
    tl = models["tinyllama:latest"]
    assert tl.kind is ModelKind.OLLAMA
    assert tl.root == "ollama/manifests/registry.ollama.ai/library/tinyllama/latest"
    assert len(tl.files) == 4  # manifest, config, two layers
    assert tl.files[0].startswith("ollama/blobs/sha256-")
    assert tl.root in tl.files
    manifest_size = (root / tl.root).stat().st_size
    assert tl.size == manifest_size + len(b'{"model_format":"gguf"}') + 40 + len(b"{{ .Prompt }}")
    assert tl.aliases == ("registry.ollama.ai/library/tinyllama:latest", "tinyllama")

    weights = "ollama/blobs/sha256-" + hashlib.sha256(b"GGUF" * 10).hexdigest()
    other = "ollama/blobs/sha256-" + hashlib.sha256(b"other").hexdigest()
    index = models_by_file(result.models)
    assert index[weights] == ("tinyllama:chat", "tinyllama:latest")
    assert index[other] == ("hf.co/org/repo:Q4_K_M", "someone/mix:v1")


def test_ollama_blobs_are_never_lone_files(root: Path) -> None:
    store = root / "ollama"
    put(store / "blobs" / "stray.gguf", b"x")
    put(store / "manifests" / ".keep", b"")
    assert scan_directory(root).models == ()


BAD_MANIFESTS: list[tuple[str, object, str]] = [
    ("invalid-json", "{", "invalid JSON"),
    ("not-object", [1], "not a JSON object"),
    ("no-layers", {"schemaVersion": 2}, "no 'layers'"),
    ("empty-layers", {"layers": []}, "no 'layers'"),
    ("layer-not-object", {"layers": ["sha256:00"]}, "layers[0] is not an object"),
    ("bad-digest", {"layers": [{"digest": "sha256:XYZ"}]}, "malformed digest"),
    ("digest-not-string", {"layers": [{"digest": 5}]}, "malformed digest"),
    ("missing-blob", {"layers": [{"digest": "sha256:" + "0" * 64}]}, "is missing"),
    (
        "bad-config",
        {"layers": [{"digest": "sha256:" + hashlib.sha256(b"GGUF" * 10).hexdigest()}], "config": 3},
        "config is not an object",
    ),
]


@pytest.mark.parametrize(("tag", "doc", "needle"), BAD_MANIFESTS)
def test_malformed_manifest_is_a_problem_and_others_survive(
    root: Path, tag: str, doc: object, needle: str
) -> None:
    store = root / "ollama"
    manifest(store, "registry.ollama.ai/library/good/latest", good_manifest(store))
    manifest(store, f"registry.ollama.ai/library/bad/{tag}", doc)

    result = scan_directory(root)

    assert [m.name for m in result.models] == ["good:latest"]
    (p,) = result.problems
    assert p.path == f"ollama/manifests/registry.ollama.ai/library/bad/{tag}"
    assert needle in p.message


def test_manifest_size_mismatch_and_misplaced_entries(root: Path) -> None:
    store = root / "ollama"
    doc = good_manifest(store)
    doc["layers"][0]["size"] += 1  # type: ignore[index]
    manifest(store, "registry.ollama.ai/library/m/latest", doc)
    manifest(store, "registry.ollama.ai/library/toplevel", good_manifest(store))

    result = scan_directory(root)

    assert result.models == ()
    assert sorted(problem_paths(result)) == [
        "ollama/manifests/registry.ollama.ai/library/m/latest",
        "ollama/manifests/registry.ollama.ai/library/toplevel",
    ]
    assert "manifest says" in result.problems[0].message


# -- lone files, mixed trees -----------------------------------------------------------------


def test_lone_files_and_symlinks_to_them(root: Path) -> None:
    put(root / "a.gguf", b"1" * 3)
    put(root / "deep" / "er" / "b.safetensors", b"2" * 4)
    link(root / "alias.gguf", "a.gguf")
    put(root / "notes.txt", b"n")

    result = scan_directory(root)

    assert [(m.name, m.kind, m.files, m.size) for m in result.models] == [
        ("a.gguf", ModelKind.FILE, ("a.gguf",), 3),
        ("deep/er/b.safetensors", ModelKind.FILE, ("deep/er/b.safetensors",), 4),
    ]


def test_mixed_tree_and_problems_are_sorted(root: Path) -> None:
    make_hf_dir(root / "hf" / "x")
    make_hub_repo(root / "hub")
    store = root / "ollama"
    manifest(store, "registry.ollama.ai/library/t/latest", good_manifest(store))
    manifest(store, "registry.ollama.ai/library/t/broken", "nope")
    put(root / "gguf" / "m.gguf", b"g")

    result = scan_directory(root)

    assert [m.name for m in result.models] == [
        "gguf/m.gguf",
        "hf/x",
        f"org/tiny@{'a' * 12}",
        f"org/tiny@{'b' * 12}",
        "t:latest",
    ]
    assert problem_paths(result) == ["ollama/manifests/registry.ollama.ai/library/t/broken"]


def test_scan_of_missing_root_raises_model_error(root: Path) -> None:
    with pytest.raises(ModelError) as e:
        scan_models(DirectoryTreeView(root), "nope")
    assert isinstance(e.value, TierfsError)
    assert e.value.path == "nope"


def test_directory_tree_view_refuses_escaping_paths(root: Path) -> None:
    view = DirectoryTreeView(root)
    with pytest.raises(FileNotFoundError):
        view.stat("../etc")
    put(root / "f", b"abc")
    assert view.stat("f") == (EntryKind.FILE, 3)
    assert view.read_text("f", 2) == "ab"


# -- name resolution --------------------------------------------------------------------------


def sample_models(root: Path) -> tuple[Model, ...]:
    make_hub_repo(root / "hub")
    store = root / "ollama"
    manifest(store, "registry.ollama.ai/library/tinyllama/latest", good_manifest(store))
    manifest(store, "registry.ollama.ai/library/tinyllama/chat", good_manifest(store))
    manifest(store, "registry.ollama.ai/library/tinyllama-big/latest", good_manifest(store))
    make_hf_dir(root / "hf" / "llama")
    return scan_directory(root).models


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tinyllama:latest", "tinyllama:latest"),
        ("tinyllama", "tinyllama:latest"),  # alias beats the prefix match on tinyllama-big
        ("registry.ollama.ai/library/tinyllama:chat", "tinyllama:chat"),
        ("tinyllama:c", "tinyllama:chat"),
        ("org/tiny", f"org/tiny@{'b' * 12}"),
        ("org/tiny@main", f"org/tiny@{'b' * 12}"),
        ("org/tiny@pr/1", f"org/tiny@{'a' * 12}"),
        (f"org/tiny@{REV_A}", f"org/tiny@{'a' * 12}"),
        ("org/tiny@aaa", f"org/tiny@{'a' * 12}"),
        ("hf/ll", "hf/llama"),
    ],
)
def test_find_model_resolves(root: Path, query: str, expected: str) -> None:
    assert find_model(sample_models(root), query).name == expected


def test_find_model_ambiguous_prefix(root: Path) -> None:
    with pytest.raises(AmbiguousModelError) as e:
        find_model(sample_models(root), "tinyllama:")
    assert e.value.candidates == ("tinyllama:chat", "tinyllama:latest")
    assert e.value.path == "tinyllama:"


def test_find_model_rejects_empty_name(root: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        find_model(sample_models(root), "  ")


def test_hub_ref_that_is_a_symlink_is_not_read(root: Path) -> None:
    make_hub_repo(root)
    put(root / "secret", REV_A)
    (root / "models--org--tiny" / "refs" / "main").unlink()
    link(root / "models--org--tiny" / "refs" / "main", "../../secret")

    result = scan_directory(root)

    assert all("main" not in m.refs for m in result.models)
    assert problem_paths(result) == ["models--org--tiny/refs/main"]


def test_find_model_unknown_lists_near_candidates(root: Path) -> None:
    with pytest.raises(ModelNotFoundError) as e:
        find_model(sample_models(root), "tinylama")
    assert "tinyllama:latest" in e.value.candidates
    assert "did you mean" in str(e.value)
    assert e.value.errno == 2


# -- performance ------------------------------------------------------------------------------


class MemoryTreeView:
    """Minimal in-memory TreeView: the shape the merged namespace is expected to have."""

    def __init__(self) -> None:
        self.dirs: dict[str, dict[str, EntryKind]] = {"": {}}
        self.sizes: dict[str, int] = {}
        self.links: dict[str, str] = {}

    def _add(self, rel: str, kind: EntryKind) -> None:
        parent, _, name = rel.rpartition("/")
        if parent not in self.dirs:
            self._add(parent, EntryKind.DIR)
        self.dirs[parent][name] = kind
        if kind is EntryKind.DIR:
            self.dirs.setdefault(rel, {})

    def file(self, rel: str, size: int) -> None:
        self._add(rel, EntryKind.FILE)
        self.sizes[rel] = size

    def symlink(self, rel: str, target: str) -> None:
        self._add(rel, EntryKind.SYMLINK)
        self.links[rel] = target

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        return list(self.dirs[rel].items())

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        parent, _, name = rel.rpartition("/")
        return self.dirs[parent][name], self.sizes.get(rel, 0)

    def readlink(self, rel: str) -> str:
        return self.links[rel]

    def read_text(self, rel: str, limit: int) -> str:
        return "{}"


def test_scan_of_ten_thousand_files_is_fast() -> None:
    view = MemoryTreeView()
    for i in range(100):
        repo = f"hub/models--org--m{i}"
        for j in range(40):
            view.file(f"{repo}/blobs/{j}", 10)
            view.symlink(f"{repo}/snapshots/{REV_A}/f{j}.safetensors", f"../../blobs/{j}")
        for j in range(40):
            view.file(f"lone/{i}/w{j}.gguf", 1)
        view.file(f"hf/m{i}/config.json", 2)
        for j in range(20):
            view.file(f"hf/m{i}/model-{j}.safetensors", 3)

    start = time.perf_counter()
    result = scan_models(view)
    elapsed = time.perf_counter() - start

    assert len(result.models) == 100 + 4000 + 100
    assert result.problems == ()
    assert elapsed < 1.0, elapsed
