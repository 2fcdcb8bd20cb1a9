"""``platform = "featurecloud"`` on SSH sites, for real: real sshd hosts in network namespaces
of the test's own (``sshd_hosts.py``), each provisioned (the website and registry reached,
Docker found, the ``featurecloud`` CLI installed in an environment of its own), each
participant's ``fedsim fc`` run AT its host in the agent environment provisioned there, with
its own login, its controller started there by the ``featurecloud`` CLI stand-in (installed
by provisioning, as the real CLI is). The website stand-in listens in the hub namespace, the
only network the hosts reach (a host with a route to the hub reaches all its addresses, one
without only its own link's); nothing leaves the namespaces the test made. Then
``fedsim compare`` and ``fedsim report`` on the record.

Installing real Docker is not tested: the hosts share this machine's system folders, where
no Docker engine can run, so ``apt-get`` (and ``service``/``systemctl``) are masked on every
host, and a host has the ``docker`` stand-in, this machine's docker CLI without an engine, or
no Docker at all; the install path runs against stand-ins of ``apt-get`` and ``service``.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsim.config import FeatureCloudConfig
from fedsim.featurecloud.credentials import PASSWORD, USERNAME, WEBSITE_URL
from fedsim.featurecloud.site_provision import CLI_ENV_NAME, cli_wheelhouse
from fedsim.sites.wheelhouse import agent_wheelhouse
from tests.conftest import ROOT, run_dir_of
from tests.fc_standin import (
    STANDIN_BIN,
    StandInWorld,
    pooled_means,
    serve,
    standin_cli_requirements,
    website_app,
)
from tests.ssh_configs import make_home, ssh_site, write_config
from tests.sshd_hosts import SshHost, SshNetwork, run_command, ssh_network
from tests.test_ssh_sites import fedsim_in_hub

DATA = ROOT / "examples" / "mean" / "data"
USERS = {
    "carla": "pw-carla-1",
    "ana": "pw-ana-2",
    "ben": "pw-ben-3",
    "dora": "pw-d",
    "eve": "pw-e",
    "fay": "pw-f",
}
TOLERANCE = 1e-12  # relative: the stand-in and the centralised app sum in another order


DOCKER = shutil.which("docker")
"""A real docker CLI on this machine (and so on the hosts, which share /usr); its engine cannot
run here. Masked on the hosts that get the stand-in, which must be the one they find."""
NO_INSTALLS = [p for p in map(shutil.which, ("apt-get", "service", "systemctl")) if p]
"""Masked on every host: provisioning must never install or start a real Docker on this
machine (the hosts share its system folders)."""
AIR_GAPPED = 4
"""The index of the one host without a route to the hub's other addresses (no internet)."""


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[SshNetwork, list[SshHost]]]:
    """Five hosts without this machine's docker; a sixth with it, if there is one. Each but
    the air-gapped one is routed to every address of the hub, where the website stand-in is."""
    with ssh_network() as network:
        masked = network.add_hosts(5, without=[DOCKER, *NO_INSTALLS] if DOCKER else NO_INSTALLS)
        hosts = masked + (network.add_hosts(1, without=NO_INSTALLS) if DOCKER else [])
        for i, host in enumerate(hosts):
            if i != AIR_GAPPED:
                route = ["route", "add", "default", "via", host.hub_address]
                run_command("ip", "-n", host.namespace, *route)
        yield network, hosts


@pytest.fixture(scope="module")
def world(hosts: tuple[SshNetwork, list[SshHost]]) -> Iterator[tuple[StandInWorld, int]]:
    """The website stand-in on every address of the hub; its port."""
    network, _ = hosts
    world = StandInWorld(users=dict(USERS), finish_after=0, results=pooled_means)
    with serve(website_app(world), netns=network.hub, host="0.0.0.0") as url:
        yield world, int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def standin_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The requirements of the ``featurecloud`` CLI stand-in's distribution, its environment
    and wheelhouse built here first (the hub has no network, and building needs pip's
    index for pip's own wheel)."""
    with standin_cli_requirements(tmp_path_factory.mktemp("fc-cli")) as requirements:
        cli_wheelhouse(FeatureCloudConfig(cli_requirements=requirements))
    return requirements


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, hosts) -> Path:
    """fedsim's HOME in the hub; the agent's wheelhouse built here first (the hub has no
    network, and building may need pip's index)."""
    agent_wheelhouse()
    network, _ = hosts
    return make_home(tmp_path_factory.mktemp("fc-ssh-home"), network.known_hosts)


def featurecloud_table(first: SshHost, port: int, cli: Path | None) -> str:
    """``[featurecloud]`` pointing provisioning at the stand-in: the website (and, as the
    registry, a path of it) at the hub's address on the first host's link, which every host
    but the air-gapped one reaches."""
    website = f"http://{first.hub_address}:{port}"
    lines = ["[featurecloud]", f'website = "{website}"', f'registry = "{website}/v2/"']
    if cli is not None:
        lines.append(f'cli_requirements = "{cli}"')
    return "\n".join(lines) + "\n"


def install_docker_standin(host: SshHost) -> None:
    """The ``docker`` stand-in where a user's own programs go: ``~/.local/bin`` of the host's
    own home (the ``featurecloud`` CLI is provisioning's to install)."""
    target = host.home / ".local" / "bin"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(STANDIN_BIN / "docker", target / "docker")


def env_text(user: str, website: str) -> str:
    return f"{USERNAME}={user}\n{PASSWORD}={USERS[user]}\n{WEBSITE_URL}={website}\n"


def private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def featurecloud_config(tmp_path: Path, sites: list[dict[str, Any]], table: str) -> Path:
    """A featurecloud config of these sites (the first coordinates)."""
    head = f'platform = "featurecloud"\ntimeout = 120\noutput_dir = "{tmp_path}/runs"\n'
    return write_config(tmp_path, sites, head=head + table)


def run_featurecloud(
    network: SshNetwork, home: Path, tmp_path: Path, sites: list[dict[str, Any]], table: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``fedsim run`` from the hub of a featurecloud config of these sites; the config and
    how the run ended."""
    config = featurecloud_config(tmp_path, sites, table)
    return config, fedsim_in_hub(network, home, "run", str(config))


def test_the_whole_order_on_three_ssh_sites_each_with_its_own_login(
    hosts, world, home: Path, standin_cli: Path, tmp_path: Path
) -> None:
    network, (a, b, c, *_) = hosts
    standin, port = world
    for host in (a, b, c):
        install_docker_standin(host)
    site_of = {"site-a": ("carla", a), "site-b": ("ana", b), "site-c": ("ben", c)}
    sites = []
    for name, (user, host) in site_of.items():
        website = f"http://{host.hub_address}:{port}"
        site = {**ssh_site(name, host), "inputs": [str(DATA / name)]}
        if name == "site-c":  # its login never leaves its host: the site's own file
            private(host.home / ".fedsim" / "featurecloud.env", env_text(user, website))
        else:  # the config's, sent to that site only
            site["env_file"] = str(private(tmp_path / f"{name}.env", env_text(user, website)))
        sites.append(site)
    table = featurecloud_table(a, port, standin_cli)
    config, result = run_featurecloud(network, home, tmp_path, sites, table)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = run_dir_of(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["platform"] == "featurecloud"
    project = standin.projects[summary["project_id"]]
    assert project.members == {"carla", "ana", "ben"} and project.owner == "carla"
    for name, (user, host) in site_of.items():
        # each site uploaded its own data, from its own host, as its own user
        assert [n for n, _ in project.uploads[user]] == ["data.csv"]
        assert project.uploads[user][0][1] == (DATA / name / "data.csv").read_bytes()
        site = summary["sites"][name]
        assert site["status"] == "finished"
        assert site["placement"]["kind"] == "ssh" and host.address in site["placement"]["location"]
        assert site["controller"]["uploaded_bytes"] == (DATA / name / "data.csv").stat().st_size
        log = (run_dir / "sites" / name / "site.log").read_text()
        assert f"logged in to http://{host.hub_address}:{port} as {user}" in log
        assert "FeatureCloud controller started at http://localhost:8000" in log
        # the controller was started and stopped there; the run left no login behind
        assert not list((host.home / ".featurecloud-standin").glob("*.pid"))
        site_info = host.home / ".fedsim" / "featurecloud-data" / "site_info.json"
        assert site_info.stat().st_mode & 0o077 == 0
        assert not list((host.home / ".fedsim").glob("fc-runs/*"))
    assert (c.home / ".fedsim" / "featurecloud.env").is_file()  # the site's own, kept
    everything = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())
    assert not any(password in everything for password in USERS.values())
    traffic = pd.read_csv(run_dir / "traffic.csv")
    assert traffic.empty and "sender" in traffic.columns
    assert "does not report what the sites' controllers sent" in summary["traffic_note"]

    compared = fedsim_in_hub(network, home, "compare", str(config), "--federated", str(run_dir))
    assert compared.returncode == 0, compared.stderr[-4000:]
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert comparison["problem"] is None
    reported = fedsim_in_hub(network, home, "report", str(run_dir))
    assert reported.returncode == 0, reported.stderr[-4000:]
    page = (run_dir / "report.html").read_text()
    assert "does not report what the sites" in page
    assert not any(password in page for password in USERS.values())


def test_a_site_without_docker_and_an_air_gapped_one_are_named_before_any_project(
    hosts, world, home: Path, standin_cli: Path, tmp_path: Path
) -> None:
    network, (a, _, _, d, e, *docker_without_engine) = hosts
    standin, port = world
    install_docker_standin(a)
    install_docker_standin(e)  # d has no Docker at all
    before = len(standin.projects)
    sites = []
    cases = [
        ("site-a", "carla", a, a.hub_address),
        ("site-d", "dora", d, d.hub_address),
        ("site-e", "eve", e, a.hub_address),  # no route from e to a's link: no internet
    ]
    for f in docker_without_engine:  # the real docker CLI, and no engine behind it
        cases.append(("site-f", "fay", f, f.hub_address))
    for name, user, host, website in cases:
        env = private(tmp_path / f"{name}.env", env_text(user, f"http://{website}:{port}"))
        sites.append(
            {**ssh_site(name, host), "inputs": [str(DATA / "site-a")], "env_file": str(env)}
        )
    table = featurecloud_table(a, port, standin_cli)
    _, result = run_featurecloud(network, home, tmp_path, sites, table)
    assert result.returncode == 10, result.stderr[-4000:]
    message = " ".join(result.stderr.split())
    assert "not ready for featurecloud.ai (no project was made)" in message
    assert f"site site-d (ssh://{d.user}@{d.address}:{d.port})" in message
    assert "no Docker here, and no apt-get to install it with" in message
    website = f"http://{a.hub_address}:{port}"
    assert f"site site-e (ssh://{e.user}@{e.address}:{e.port}): cannot reach {website} (" in message
    assert f"{website}/v2/ (" in message and "needs the internet at every site" in message
    if docker_without_engine:
        assert f"site site-f (ssh://root@{docker_without_engine[0].address}:22)" in message
        assert f"Docker is installed ({DOCKER}) but its engine does not answer" in message
        assert "no systemctl or service here to start it" in message
    assert "site site-a (" not in message
    assert len(standin.projects) == before  # nothing was made on the website
    assert not list((a.home / ".featurecloud-standin").glob("*.pid"))  # a's controller stopped


def test_provisioning_installs_the_real_featurecloud_cli_in_its_own_environment(
    hosts, world, home: Path, tmp_path: Path
) -> None:
    """The real ``FeatureCloud`` package (fedsim's pin) from the wheelhouse fedsim ships, at
    a host with no package index; Docker (the stand-in) left as it was; then an air-gapped
    site named with what it could not reach."""
    network, (_, b, _, _, e, *_) = hosts
    _, port = world
    cli = cli_wheelhouse(FeatureCloudConfig())  # built here: the hub has no index
    install_docker_standin(b)
    install_docker_standin(e)
    table = featurecloud_table(hosts[1][0], port, None)
    site_b = {**ssh_site("site-b", b), "inputs": [str(DATA / "site-b")]}
    config = featurecloud_config(tmp_path, [site_b], table)
    done = fedsim_in_hub(network, home, "provision", str(config))
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert any(f"{CLI_ENV_NAME} ({cli.key})" in r and "installed" in r for r in rows), done.stdout
    assert any("│ docker │ already there │" in r for r in rows), done.stdout  # not reinstalled

    program = f"~/.fedsim/envs/{cli.key}/bin/featurecloud"
    version = b.ssh(f"{program} --version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "featurecloud, version 0.1.0"
    agent = f"~/.fedsim/envs/{agent_wheelhouse().key}/bin/python"
    probe = "import importlib.util as u; print(u.find_spec('FeatureCloud'))"
    assert b.ssh(f'{agent} -c "{probe}"').stdout.strip() == "None"  # not in fedsim's env
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("FeatureCloud")  # nor in this one

    site_e = {**ssh_site("site-e", e), "inputs": [str(DATA / "site-a")]}
    config = featurecloud_config(tmp_path, [site_b, site_e], table)
    refused = fedsim_in_hub(network, home, "provision", str(config))
    assert refused.returncode == 10, refused.stderr[-4000:]
    message = " ".join(refused.stderr.split())
    website = f"http://{hosts[1][0].hub_address}:{port}"
    assert f"site site-e (ssh://{e.user}@{e.address}:{e.port}): cannot reach {website} (" in message
    assert f"{website}/v2/ (" in message and "needs the internet at every site" in message
    assert not (e.home / ".fedsim" / "envs" / cli.key).exists()  # nothing installed there


def test_a_site_without_docker_gets_it_from_apt_get_and_its_engine_started(
    hosts, world, home: Path, standin_cli: Path, tmp_path: Path
) -> None:
    """The install path, with stand-ins of ``apt-get`` and ``service`` in the host's
    ``~/.local/bin`` (the real ones are masked on the hosts: real Docker is never installed
    here): what fedsim asks the package manager for, then the engine started; a second
    provisioning leaves it as it is."""
    network, (_, _, c, *_) = hosts
    _, port = world
    programs = c.home / ".local" / "bin"
    programs.mkdir(parents=True, exist_ok=True)
    (programs / "docker").unlink(missing_ok=True)  # this site has no Docker yet
    for name in ("apt-get", "service"):
        shutil.copy(STANDIN_BIN / name, programs / name)
    shutil.copy(STANDIN_BIN / "docker", programs / "docker.deb-standin")
    state = c.home / ".featurecloud-standin"
    try:
        site = {**ssh_site("site-c", c), "inputs": [str(DATA / "site-c")]}
        table = featurecloud_table(hosts[1][0], port, standin_cli)
        config = featurecloud_config(tmp_path, [site], table)
        done = fedsim_in_hub(network, home, "provision", str(config))
        assert done.returncode == 0, done.stderr[-4000:]
        assert "│ docker │ installed │" in " ".join(done.stdout.split()), done.stdout
        asked = (state / "apt-get.log").read_text().splitlines()
        assert asked == ["update -q", "install -y -q docker.io"]
        assert (programs / "docker").is_file() and not (state / "docker-stopped").exists()

        again = fedsim_in_hub(network, home, "provision", str(config))
        assert again.returncode == 0, again.stderr[-4000:]
        assert "│ docker │ already there │" in " ".join(again.stdout.split()), again.stdout
        assert "0 of 1 SSH sites changed" in again.stdout
        assert (state / "apt-get.log").read_text().splitlines() == asked
    finally:
        for name in ("apt-get", "service", "docker.deb-standin"):
            (programs / name).unlink(missing_ok=True)
        (state / "apt-get.log").unlink(missing_ok=True)
