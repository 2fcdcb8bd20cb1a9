"""Shared helpers: real configs, real runs of the real ``fedsim`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w

from tests.sshd_hosts import SshNetwork, ssh_network

ROOT = Path(__file__).resolve().parent.parent
MEAN_APP = ROOT / "apps" / "mean"
BEHAVE_APP = ROOT / "tests" / "apps" / "behave"


@pytest.fixture(scope="session", autouse=True)
def app_environment() -> Path:
    """Build the apps' environment once, outside any test's timing (both apps share it)."""
    from fedsim.appenv import ensure_app_env

    assert (MEAN_APP / "requirements.txt").read_bytes() == (
        BEHAVE_APP / "requirements.txt"
    ).read_bytes()
    return ensure_app_env(MEAN_APP)


@pytest.fixture(params=["exec", "fork"])
def site_start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways local sites' apps start (``FEDSIM_SITE_START``, which the fedsim processes
    of a test inherit): a fresh interpreter each, or forked from a fork-server."""
    monkeypatch.setenv("FEDSIM_SITE_START", request.param)
    return str(request.param)


def fedsim(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def start_fedsim(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def write_run(tmp_path: Path, app: Path, sites: dict[str, dict[str, Any]], **top: Any) -> Path:
    """A config with one input folder per site; ``behave`` keys become that site's config.yml."""
    import yaml

    entries = []
    for i, (name, options) in enumerate(sites.items()):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        if "behave" in options:
            (data / "config.yml").write_text(yaml.safe_dump({"behave": options["behave"]}))
        for filename, text in options.get("files", {}).items():
            (data / filename).write_text(text)
        entry: dict[str, Any] = {"name": name, "inputs": [f"data/{name}"]}
        if i == 0:
            entry["coordinator"] = True
        if "env_file" in options:
            entry["env_file"] = options["env_file"]
        entries.append(entry)
    return write_config(tmp_path, app, entries, **top)


def write_config(tmp_path: Path, app: Path, sites: list[dict[str, Any]], **top: Any) -> Path:
    """tmp_path/fedsim.toml for ``app`` and these [[sites]]: runs under tmp_path/runs, a
    timeout of two minutes and the engine's waits shortened, unless ``top`` says otherwise."""
    config = {
        "app": str(app),
        "output_dir": str(tmp_path / "runs"),
        "timeout": 120,
        "shorten_waits": True,
        **top,
        "sites": sites,
    }
    path = tmp_path / "fedsim.toml"
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP port listening on the host's loopback, which no site may reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def example_frames(example: Path) -> list[pd.DataFrame]:
    """Each site's data.csv of a bundled example, in site order."""
    return [pd.read_csv(p) for p in sorted(example.glob("data/site-*/data.csv"))]


def resplit(example: Path, sizes: list[int]) -> list[pd.DataFrame]:
    """The example's pooled rows cut into sites of other sizes (in the same pooled order)."""
    pooled = pd.concat(example_frames(example), ignore_index=True)
    assert sum(sizes) == len(pooled)
    bounds = np.cumsum([0, *sizes])
    return [pooled.iloc[a:b].reset_index(drop=True) for a, b in pairwise(bounds)]


def frame_sites(config_key: str, frames: list[pd.DataFrame], config: dict) -> dict[str, dict]:
    """write_run sites holding these frames as data.csv and one shared app config.yml."""
    import yaml

    text = yaml.safe_dump({config_key: config})
    return {
        f"site-{i}": {"files": {"data.csv": frame.to_csv(index=False), "config.yml": text}}
        for i, frame in enumerate(frames)
    }


def run_dir_of(result: subprocess.CompletedProcess[str]) -> Path:
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{result.stderr}"
    return Path(lines[-1])


def sandbox_processes() -> list[str]:
    """bwrap processes still running on this machine.

    Zombies are left out: bwrap's outer process exits without reaping the sandbox's pid 1,
    which the machine's init reaps a moment later; a zombie runs nothing and holds nothing.
    """
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True)
    return [
        line
        for line in out.stdout.splitlines()
        if "bwrap" in line and not line.split()[1].startswith("Z")
    ]


@pytest.fixture
def no_leftover_sandboxes(tmp_path: Path) -> Iterator[None]:
    """No sandbox of this test's runs (their output lies under tmp_path) outlives the test."""
    yield
    left = [p for p in sandbox_processes() if str(tmp_path) in p]
    assert not left, f"sandboxes left running: {left}"


def interrupt(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)


@pytest.fixture
def ssh_hosts() -> Iterator[SshNetwork]:
    """Real sshd hosts, each in network, mount and PID namespaces of its own: ``a, b =
    ssh_hosts(2)``. They are reached from the hub namespace (``ssh_hosts.in_hub(argv)``,
    ``host.ssh(...)``), never from the machine's own network; all of it is gone after the
    test, and a teardown that leaves anything behind fails the test."""
    with ssh_network() as network:
        yield network
