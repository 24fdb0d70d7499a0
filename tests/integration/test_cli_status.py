"""``tierfs status`` in subprocesses, without a mount, over a store holding good and
malformed model units; and what the CLI imports to get there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import cliutil
from tests.integration.cliutil import (
    REPO_ROOT,
    base_config,
    cold_table,
    tierfs_cli,
)
from tierfs.ops.demo import DemoStore, build_demo_store

pytestmark = pytest.mark.timeout(120)
cold = cliutil.cold


BROKEN_OLLAMA = "ollama/manifests/registry.ollama.ai/library/broken/latest"
MISSING_BLOB_OLLAMA = "ollama/manifests/registry.ollama.ai/library/lost/latest"
BROKEN_HF_CONFIG = "hf/broken-model/config.json"
MISSING_DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def messy_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoStore]:
    """The demo store plus three malformed units."""
    root = tmp_path_factory.mktemp("messy") / "cold"
    demo = build_demo_store(root)
    broken = root / BROKEN_OLLAMA
    broken.parent.mkdir(parents=True)
    broken.write_text('{"schemaVersion": 2, "layers": [')
    lost = root / MISSING_BLOB_OLLAMA
    lost.parent.mkdir(parents=True)
    lost.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": MISSING_DIGEST,
                        "size": 1234,
                    }
                ],
            }
        )
    )
    hf = root / BROKEN_HF_CONFIG
    hf.parent.mkdir(parents=True)
    hf.write_text('{"model_type": "llama",,}')
    (hf.parent / "model.safetensors").write_bytes(b"\0" * 4096)
    return root, demo


def expected_models(root: Path, demo: DemoStore) -> dict[str, tuple[str, int, int]]:
    """name -> (kind, size, number of files), computed from the disk on its own terms."""

    def total(paths: list[Path]) -> tuple[int, int]:
        unique = {p.resolve() for p in paths}
        return sum(p.stat().st_size for p in unique), len(unique)

    out: dict[str, tuple[str, int, int]] = {}
    hf_files = [p for p in demo.hf_dir.rglob("*") if p.is_file()]
    out["hf/tiny-llama"] = ("hf_dir", *total(hf_files))
    snapshot = demo.hub_repo / "snapshots" / demo.hub_revision
    out[f"tierfs-demo/tiny-llama@{demo.hub_revision[:12]}"] = (
        "hf_hub",
        *total(list(snapshot.iterdir())),
    )
    manifest = json.loads(demo.ollama_manifest.read_text())
    blobs = [
        demo.ollama_root / "blobs" / d["digest"].replace(":", "-")
        for d in [*manifest["layers"], manifest["config"]]
    ]
    out["tiny-llama:latest"] = ("ollama", *total([demo.ollama_manifest, *blobs]))
    out["gguf/tiny-llama.gguf"] = ("file", *total([demo.gguf_file]))
    out["misc/embeddings.safetensors"] = ("file", *total([demo.embeddings_file]))
    assert sorted(out) == sorted(demo.model_names)
    return out


def status_config(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "tierfs.toml"
    config.write_text(base_config(tmp_path, root) + cold_table(root, "messy"))
    return config


def test_status_json_lists_good_models_and_one_problem_per_malformed_unit(
    tmp_path: Path, messy_store: tuple[Path, DemoStore]
) -> None:
    root, demo = messy_store
    proc = tierfs_cli("status", "--json", "-c", str(status_config(tmp_path, root)))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)

    got = {m["name"]: (m["kind"], m["size"], len(m["files"])) for m in data["models"]}
    assert got == expected_models(root, demo)
    for m in data["models"]:
        for rel in m["files"]:
            assert (root / rel).is_file(), rel

    problems = {p["path"]: p["message"] for p in data["problems"]}
    assert sorted(problems) == sorted([BROKEN_OLLAMA, MISSING_BLOB_OLLAMA, BROKEN_HF_CONFIG])
    assert len(data["problems"]) == 3
    assert "invalid JSON" in problems[BROKEN_OLLAMA]
    assert MISSING_DIGEST in problems[MISSING_BLOB_OLLAMA]
    assert "missing" in problems[MISSING_BLOB_OLLAMA]
    assert "invalid JSON" in problems[BROKEN_HF_CONFIG]
    assert data["conflicts"] == []


def test_status_plain_output_mentions_models_and_problems(
    tmp_path: Path, messy_store: tuple[Path, DemoStore]
) -> None:
    root, demo = messy_store
    proc = tierfs_cli("status", "-c", str(status_config(tmp_path, root)))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in demo.model_names:
        assert name in out, name
    assert "Problems" in out
    for path in (BROKEN_OLLAMA, MISSING_BLOB_OLLAMA, BROKEN_HF_CONFIG):
        line = next((x for x in out.splitlines() if path in x), None)
        assert line is not None, f"{path} not in:\n{out}"
    assert out.count("invalid JSON") == 2
    assert MISSING_DIGEST in out


def test_status_names_the_placement_strategy_in_json_and_text(tmp_path: Path, cold: Path) -> None:
    config = status_config(tmp_path, cold)
    assert json.loads(tierfs_cli("status", "--json", "-c", str(config)).stdout)["strategy"] == (
        "fastest-fit"
    )
    config.write_text(config.read_text() + '\n[placement]\nstrategy = "fill-first"\n')
    assert json.loads(tierfs_cli("status", "--json", "-c", str(config)).stdout)["strategy"] == (
        "fill-first"
    )
    assert "placement strategy: fill-first" in tierfs_cli("status", "-c", str(config)).stdout


def test_status_over_empty_store_says_no_models(tmp_path: Path, cold: Path) -> None:
    proc = tierfs_cli("status", "-c", str(status_config(tmp_path, cold)))
    assert proc.returncode == 0, proc.stderr
    assert "no models found" in proc.stdout
    js = tierfs_cli("status", "--json", "-c", str(status_config(tmp_path, cold)))
    data = json.loads(js.stdout)
    assert (data["models"], data["problems"], data["conflicts"]) == ([], [], [])
    assert data["running"] is False
    assert data["tiers"] == [] and data["jobs"] == []


def test_cli_start_up_imports_neither_pydantic_nor_an_http_library() -> None:
    # `tierfs --version` and every command pay for what the CLI imports before it runs.
    probe = (
        "import sys; import tierfs.control.cli, tierfs.control.client; "
        "print(sorted(m for m in ('pydantic', 'httpx', 'rich.table') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_help_status_and_the_demo_package_import_no_tensor_library(
    tmp_path: Path, cold: Path
) -> None:
    # The demo's writers need torch, numpy and gguf; the rest of the CLI must not pay for them.
    config = status_config(tmp_path, cold)
    probe = (
        "import sys; from typer.testing import CliRunner; "
        "from tierfs.control.cli import app; import tierfs.ops.demo; "
        "runner = CliRunner(); "
        "assert runner.invoke(app, ['--help']).exit_code == 0; "
        "assert runner.invoke(app, ['demo', '--help']).exit_code == 0; "
        f"result = runner.invoke(app, ['status', '-c', {str(config)!r}]); "
        "assert result.exit_code == 0, result.output; "
        "print(sorted(m for m in ('torch', 'numpy', 'gguf', 'safetensors') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
