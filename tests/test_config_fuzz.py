"""Malformed configs of every kind end in a config or in one ConfigError naming the file,
never in a traceback: values of the wrong type, unknown keys, nested junk, and random bytes
(invalid UTF-8 among them), in-process through ``load_config`` and a few through the real
``fedsim validate``. Run with ``-s`` to see how many configs were tried."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.config import RunConfig, load_config
from fedsim.errors import ConfigError, ExitCode
from tests.conftest import MEAN_APP

IN_PROCESS_EXAMPLES = 600
CLI_EXAMPLES = 8

KEYS = [
    "app",
    "name",
    "output_dir",
    "timeout",
    "seed",
    "shorten_waits",
    "poll_interval",
    "compare",
    "capture_payloads",
    "requirements",
    "steps",
    "sites",
]
"""Every top-level key but ``python``, whose check runs interpreters (slow, not a parser)."""

SITE_KEYS = ["name", "coordinator", "inputs", "env_file"]

AWKWARD_STRINGS = [
    "a",
    "b",
    "",
    ".",
    "..",
    "../../x",
    "/",
    "/dev/zero",
    "/dev/null",
    "~",
    "a/runs",
    "missing.csv",
    "x" * 300,
    "a\x00b",
    "[/]",
    "a\nb",
    "é",
    str(MEAN_APP),
    f"{MEAN_APP}/runs",
    "inf",
    "true",
]
"""Strings that have broken configs before: paths out of the folder, devices, NUL bytes,
names too long for the system, markup, newlines."""

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(AWKWARD_STRINGS),
    st.dates(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
random_keys = st.text(max_size=10).filter(lambda k: k not in {*KEYS, "python"})


def good_site(name: str, coordinator: bool = False) -> dict[str, Any]:
    return {"name": name, "coordinator": coordinator, "inputs": [name]}


@st.composite
def sites(draw: st.DrawFn) -> list[Any]:
    """Good sites with some fields junk, or a list of junk."""
    if draw(st.booleans()):
        return draw(st.lists(values, max_size=3))
    out: list[Any] = [good_site("a", True), good_site("b")]
    for site in out:
        for key in draw(st.lists(st.sampled_from(SITE_KEYS) | random_keys, max_size=2)):
            site[key] = draw(values)
    return out


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A good config, then some keys given random values, random keys added, the sites
    spoilt, and sometimes a workflow or tolerances."""
    config: dict[str, Any] = {"app": str(MEAN_APP), "sites": [good_site("a", True), good_site("b")]}
    if draw(st.booleans()):
        config["sites"] = draw(sites())
    if draw(st.booleans()):
        del config["app"]
        config["steps"] = [{"app": str(MEAN_APP), "inputs": draw(st.lists(values, max_size=2))}]
    if draw(st.booleans()):
        config["compare"] = {"tolerances": draw(st.dictionaries(st.text(max_size=20), values))}
    config.update(draw(st.dictionaries(st.sampled_from(KEYS) | random_keys, values, max_size=4)))
    return config


def toml_bytes(config: dict[str, Any]) -> bytes:
    return tomli_w.dumps(config).encode("utf-8")


GOOD = toml_bytes({"app": str(MEAN_APP), "sites": [good_site("a", True), good_site("b")]})


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A good config's bytes with a few random bytes written into it (invalid UTF-8 too)."""
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


files = st.one_of(configs().map(toml_bytes), damaged(), st.binary(max_size=200))


def folder(base: Path) -> Path:
    """A config's folder with the good config's inputs, shared by every example of a test."""
    for name in ("a", "b"):
        (base / name).mkdir()
    return base


def check(path: Path) -> str:
    """``load_config`` ends in a config or in a ConfigError whose every fault names the file;
    any other exception fails the test. Returns which of the two it was."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: "), message
        return "refused"
    assert isinstance(config, RunConfig)
    return "valid"


def test_malformed_configs_never_escape_as_other_exceptions(tmp_path: Path) -> None:
    base = folder(tmp_path)
    path = base / "fedsim.toml"
    seen = {"valid": 0, "refused": 0}

    @settings(
        max_examples=IN_PROCESS_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(files)
    def one(data: bytes) -> None:
        path.write_bytes(data)
        seen[check(path)] += 1

    one()
    total = seen["valid"] + seen["refused"]
    print(f"\nfuzzed {total} configs in-process: {seen['valid']} valid, {seen['refused']} refused")
    assert seen["refused"] > total // 2  # the strategies do produce malformed configs


def test_malformed_configs_through_the_real_command(tmp_path: Path) -> None:
    base = folder(tmp_path)
    path = base / "fedsim.toml"
    runs = {"count": 0}

    @settings(max_examples=CLI_EXAMPLES, deadline=None, database=None)
    @given(files)
    def one(data: bytes) -> None:
        path.write_bytes(data)
        result = subprocess.run(
            [sys.executable, "-m", "fedsim", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        runs["count"] += 1
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode in (ExitCode.OK, ExitCode.CONFIG), result.stderr
        if result.returncode == ExitCode.CONFIG:
            assert result.stderr.startswith(f"error: {path}: "), result.stderr
        else:
            assert result.stdout.startswith(f"{path}: ok: "), result.stdout

    one()
    print(f"\nfuzzed {runs['count']} configs through `fedsim validate`")
