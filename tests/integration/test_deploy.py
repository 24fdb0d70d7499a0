"""The deployment files say what matters: checked by parsing them, and the Kubernetes
manifests against the Kubernetes schemas (kubernetes-validate, offline).

No container engine or cluster runs here; docs/deploy.md says what was and was not built.
"""

from __future__ import annotations

import glob
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import tierfs.config as config_module
from tierfs.config import config_from_dict

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SOCKET = "/var/lib/tierfs/control.sock"
# How the Dockerfile finds pyfuse3's extension, to see which libfuse it links.
FIND_EXT = "import pyfuse3; print(pyfuse3.__file__)"


def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


@pytest.fixture(autouse=True)
def inference_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployment configs size their RAM tiers for an inference node, not this VM."""
    monkeypatch.setattr(config_module, "physical_memory", lambda: 1 << 40)


def valid_config(text: str, tmp_path: Path) -> dict[str, Any]:
    """Validate a deployment's config like tierfs does, with its cold stores pointed at a
    scratch directory (they are the node's paths, absent here)."""
    data = tomllib.loads(text)
    for store in data["cold"]:
        store["path"] = str(tmp_path)
    config_from_dict(data, source="deploy")
    return data


# Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_manifests_pass_the_kubernetes_schemas(version: str) -> None:
    files = sorted(glob.glob(str(K8S / "*.yaml")))
    assert len(files) >= 4
    result = subprocess.run(
        [Path(sys.executable).with_name("kubernetes-validate"), "--strict", "-k", version, *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(k8s_docs())


def test_schema_check_catches_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "daemonset.yaml").read_text().replace("privileged:", "privilegd:"))
    result = subprocess.run(
        [Path(sys.executable).with_name("kubernetes-validate"), "--strict", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "privilegd" in result.stdout + result.stderr


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def test_daemonset_owns_the_host_mount(tmp_path: Path) -> None:
    docs = k8s_docs()
    pod = docs[("DaemonSet", "tierfs")]["spec"]["template"]
    spec = pod["spec"]
    tierfs = next(c for c in spec["containers"] if c["name"] == "tierfs")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = _mounts(tierfs)
    config = valid_config(docs[("ConfigMap", "tierfs-config")]["data"]["config.toml"], tmp_path)

    assert tierfs["securityContext"]["privileged"] is True
    assert volumes["fuse"]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert mounts["fuse"]["mountPath"] == "/dev/fuse"
    # The mount made in the pod reaches the host; so do the tier tmpfs mounts.
    assert volumes["models"]["hostPath"]["path"] == config["mountpoint"] == "/models"
    assert mounts["models"]["mountPath"] == "/models"
    assert mounts["models"]["mountPropagation"] == "Bidirectional"
    tier_root = mounts["tiers"]["mountPath"]
    assert volumes["tiers"]["hostPath"]["path"] == tier_root
    assert mounts["tiers"]["mountPropagation"] == "Bidirectional"
    assert all(Path(t["path"]).is_relative_to(tier_root) for t in config["tier"])
    # State (the catalog) lives on the host, where the probes find the socket.
    assert volumes["state"]["hostPath"]["path"] == mounts["state"]["mountPath"]
    assert config["state_dir"] == mounts["state"]["mountPath"]
    assert f"{config['state_dir']}/control.sock" == SOCKET
    assert volumes["config"]["configMap"]["name"] == "tierfs-config"
    assert mounts["config"]["mountPath"] == "/etc/tierfs"
    assert tierfs["args"][-1] == "/etc/tierfs/config.toml"

    pre_stop = tierfs["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:2] == ["tierfs", "unmount"]
    assert spec["terminationGracePeriodSeconds"] >= 30
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = " ".join(tierfs[probe]["exec"]["command"])
        assert f"--unix-socket {SOCKET}" in command, probe
        assert "http://tierfs/api/status" in command, probe
    assert "findmnt" in " ".join(tierfs["readinessProbe"]["exec"]["command"])


def test_metrics_are_scraped_through_a_get_only_relay() -> None:
    docs = k8s_docs()
    pod = docs[("DaemonSet", "tierfs")]["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] == "/metrics"
    relay = next(c for c in pod["spec"]["containers"] if c["name"] == "metrics")
    assert str(relay["ports"][0]["containerPort"]) == notes["prometheus.io/port"]
    nginx = docs[("ConfigMap", "tierfs-metrics-relay")]["data"]["nginx.conf"]
    assert f"listen {notes['prometheus.io/port']};" in nginx
    assert f"proxy_pass http://unix:{SOCKET}:/metrics;" in nginx
    assert nginx.count("proxy_pass") == 1 and "limit_except GET" in nginx
    assert _mounts(relay)["state"]["mountPath"] == "/var/lib/tierfs"


def test_model_server_reads_the_mount_host_to_container() -> None:
    spec = k8s_docs()[("Deployment", "llama-server")]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"tierfs.io/enabled": "true"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["hostPath"]["path"] == "/models"
    for container in spec["initContainers"] + spec["containers"]:
        models = _mounts(container)["models"]
        assert models["mountPropagation"] == "HostToContainer", container["name"]
        assert models["readOnly"] is True
    ds = k8s_docs()[("DaemonSet", "tierfs")]["spec"]["template"]["spec"]
    assert ds["nodeSelector"] == spec["nodeSelector"]


# Compose ---------------------------------------------------------------------------------


def test_compose_shares_the_mount_with_the_model_server(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    tierfs = compose["services"]["tierfs"]
    assert tierfs["privileged"] is True
    assert "/dev/fuse:/dev/fuse" in tierfs["devices"]
    context = (DEPLOY / tierfs["build"]["context"]).resolve()
    assert context == REPO and (context / tierfs["build"]["dockerfile"]).is_file()
    volumes = {v["target"]: v for v in tierfs["volumes"]}
    assert volumes["/models"]["bind"]["propagation"] == "rshared"
    assert volumes["/mnt/tierfs"]["bind"]["propagation"] == "rshared"
    config_source = DEPLOY / volumes["/etc/tierfs/config.toml"]["source"]
    config = valid_config(config_source.read_text(), tmp_path)
    assert config["mountpoint"] == "/models"
    assert all(Path(t["path"]).is_relative_to("/mnt/tierfs") for t in config["tier"])
    assert all(c["path"] in volumes for c in tomllib.loads(config_source.read_text())["cold"])
    assert SOCKET in tierfs["healthcheck"]["test"]

    llama = compose["services"]["llama"]
    assert llama["depends_on"]["tierfs"]["condition"] == "service_healthy"
    models = next(v for v in llama["volumes"] if v["target"] == "/models")
    assert models["bind"]["propagation"] == "rslave" and models["read_only"] is True


# Dockerfile ------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (keyword, arguments), line continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        stages[current].append((keyword, rest.strip()))
    return stages


def test_dockerfile_builds_with_scripts_setup_and_ships_only_what_runs() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["", "build", "runtime"]
    base = dict(stages[""])["ARG"]
    assert base.startswith("DEBIAN=debian:")
    for name in ("build", "runtime"):
        assert stages[name][0] == ("FROM", f"${{DEBIAN}} AS {name}")

    build = stages["build"]
    runs = [rest for keyword, rest in build if keyword == "RUN"]
    # The image builds libfuse and pyfuse3 exactly as a checkout does: by scripts/setup.
    assert "scripts/setup" in runs
    copied = [shlex.split(rest)[:-1] for keyword, rest in build if keyword == "COPY"]
    for sources in copied:
        for source in sources:
            assert (REPO / source).exists(), f"the build stage copies {source}, which is missing"
    assert ["scripts"] in copied
    assert any(
        "cp -a .venv tierfs loader" in run and 'ldd "$ext"' in run and FIND_EXT in run
        for run in runs
    ), "the runtime tree is gathered from the venv and the libfuse pyfuse3 links"

    runtime = stages["runtime"]
    from_build = [rest for keyword, rest in runtime if keyword == "COPY" and "--from" in rest]
    assert from_build == ["--from=build /runtime/ /"]
    local = [rest for keyword, rest in runtime if keyword == "COPY" and "--from" not in rest]
    assert all((REPO / shlex.split(rest)[0]).exists() for rest in local)
    installs = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    assert "gcc" not in installs and "-dev" not in installs, "no build tools at runtime"
    instructions = dict(runtime)
    assert instructions["ENTRYPOINT"] == '["tierfs"]'
    assert instructions["CMD"].startswith('["mount", "--foreground"')
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert SOCKET in instructions["HEALTHCHECK"]


def test_the_libfuse_pyfuse3_links_is_found_the_way_the_dockerfile_looks() -> None:
    ext = subprocess.run(
        [sys.executable, "-c", FIND_EXT], capture_output=True, text=True, check=True
    ).stdout.strip()
    ldd = subprocess.run(["ldd", str(ext)], capture_output=True, text=True, check=True).stdout
    lines = [line for line in ldd.splitlines() if "libfuse3" in line]
    assert len(lines) == 1 and "not found" not in lines[0], ldd
    assert Path(lines[0].split()[2]).exists()
