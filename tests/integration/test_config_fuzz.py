"""A config fuzzer: whatever a config file holds, tierfs answers with a valid config or one
ConfigError line (exit 2 from the CLI), never another exception, a traceback or a hang."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.soak.junk import check_config_file
from tierfs.config import Config, config_from_dict, load_config
from tierfs.errors import ConfigError

KEYS = {
    "": ["mountpoint", "state_dir", "log_level", "allow_other", "default_permissions"],
    "cold": ["name", "path"],
    "tier": ["name", "path", "size", "rank", "kind", "mount_tmpfs", "huge_pages"],
    "policy": [
        "promote_on_open",
        "min_size",
        "cooldown_s",
        "high_watermark",
        "low_watermark",
        "max_parallel_copies",
    ],
    "read": ["readahead", "prefetch_window", "prefetch_chunk", "io_threads"],
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _scalars(base: Path) -> st.SearchStrategy[Any]:
    paths = st.sampled_from(
        [
            str(base / "dir"),
            str(base / "file"),
            str(base / "missing"),
            str(base / "dir" / "inner"),
            str(base / ("x" * 300) / ("y" * 300)),
            "relative/path",
            "/",
            "",
            str(base / "dir") + "\x00",
        ]
    )
    sizes = st.sampled_from(["1G", "64M", "0", "-1", "99999999E", "9" * 300, "1.5T", "8E", "G"])
    return st.one_of(
        paths,
        sizes,
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(["ram", "remote", "debug", "info", "ram0", "c"]),
    )


def _documents(base: Path) -> st.SearchStrategy[dict[str, Any]]:
    scalars = _scalars(base)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=6,
    )

    def table(section: str) -> st.SearchStrategy[dict[str, Any]]:
        return st.dictionaries(st.sampled_from([*KEYS[section], "bogus"]), scalars | values)

    return st.fixed_dictionaries(
        {},
        optional={
            **{key: scalars for key in KEYS[""]},
            "cold": st.lists(table("cold"), max_size=3) | values,
            "tier": st.lists(table("tier"), max_size=3) | values,
            "policy": table("policy") | values,
            "read": table("read") | values,
            "extra": values,
        },
    )


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    return tmp_path


def test_any_parsed_document_is_a_config_or_one_config_error(base: Path) -> None:
    @FUZZ
    @given(_documents(base))
    def check(document: dict[str, Any]) -> None:
        try:
            config = config_from_dict(document, source="fuzz.toml")
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("fuzz.toml")
            assert len(str(exc)) < 1000, str(exc)
        else:
            assert isinstance(config, Config)

    check()


def test_any_file_is_a_config_or_one_config_error(base: Path) -> None:
    good = (
        f'mountpoint = "{base / "mnt"}"\nstate_dir = "{base / "state"}"\n'
        f'[[cold]]\nname = "c"\npath = "{base / "dir"}"\n'
        f'[[tier]]\nname = "ram0"\npath = "{base / "ram0"}"\nsize = "64M"\n'
    )
    config_file = base / "fuzz.toml"

    @FUZZ
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.tuples(st.integers(0, len(good)), st.text(string.printable, max_size=12)).map(
                lambda cut: good[: cut[0]] + cut[1] + good[cut[0] :]
            ),
            st.integers(1, 50_000).map(lambda depth: "x = " + "[" * depth + "]" * depth),
        )
    )
    def check(content: bytes | str) -> None:
        if isinstance(content, str):
            content = content.encode()
        config_file.write_bytes(content)
        try:
            load_config(config_file)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(config_file)), str(exc)

    check()


def test_the_cli_answers_random_configs_with_exit_0_or_2_and_one_line(base: Path) -> None:
    config = base / "cli.toml"

    # Each example is a CLI start-up: few of them, the in-process fuzzers above do the rest.
    @settings(max_examples=12, deadline=None, derandomize=True)
    @given(_documents(base))
    def check(document: dict[str, Any]) -> None:
        config.write_text(_toml(document))
        failure = check_config_file(config)
        assert failure is None, failure

    check()


def _toml(document: dict[str, Any]) -> str:
    """TOML for a fuzzed document: inline values, as JSON writes most of them."""
    lines = []
    for key, value in document.items():
        lines.append(f"{json.dumps(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else repr(value)  # repr writes inf, -inf, 1e+300
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)
