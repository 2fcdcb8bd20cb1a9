"""The fork-server that starts sites' apps (``sites/forkserver.py``), seen from the host while
a run goes on: no one on the host, and nothing in its view that a site must not reach."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.sites.local_step import fedsim_runtime_dirs
from fedsim.sites.uids import FIRST_UID
from tests.conftest import MEAN_APP, fedsim, run_dir_of, write_run
from tests.test_isolation import ForkSites, make_site
from tests.test_run_failures import start_hanging_run

SECRETS = {"token", "launch.json", "relay.sock", "shadow"}
"""Names of files that must not exist in the server's view."""


def _children(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid:
                todo.append(child)
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
    return {pid: args.decode(errors="replace") for pid, args in found.items()}


@contextlib.contextmanager
def _hanging_fork_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str
) -> Iterator[tuple[dict[int, str], int, Path]]:
    """A run of two hanging forked sites (as root): every process below fedsim, the one
    server whose command line names ``server`` (not its bwrap), and the run's temporary
    folder; the run is ended with SIGTERM after."""
    monkeypatch.setenv("FEDSIM_SITE_START", "fork")
    process, _run_dir, temp = start_hanging_run(tmp_path)
    try:
        below = _children(process.pid)
        bwrap = "/usr/bin/bwrap"
        found = [p for p, args in below.items() if server in args and not args.startswith(bwrap)]
        assert len(found) == 1, below
        yield below, found[0], temp
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def _uids(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(u) for u in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


def _names_in_view(pid: int, *trees: Path) -> set[str]:
    """File names in the process's mount namespace, outside the system and ``trees`` (an
    environment, fedsim's runtime: they hold only what is installed there)."""
    root = Path(f"/proc/{pid}/root")
    skipped = {root / d for d in ("proc", "sys", "dev", "usr", "etc")} | {
        root / tree.relative_to("/") for tree in trees
    }
    names: set[str] = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skipped]
        names.update(files)
    return names


def test_the_fork_server_is_no_one_on_the_host_and_sees_no_token_or_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_environment: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("as an ordinary user the server is that user (checked by the hostile apps)")
    with _hanging_fork_run(tmp_path, monkeypatch, "forkserver_main.py") as (below, server, _):
        (server_uid,) = _uids(server)
        assert server_uid >= FIRST_UID, "the fork-server runs as root or a real account"
        assert os.readlink(f"/proc/{server}/ns/user") != os.readlink("/proc/self/ns/user")
        names = _names_in_view(server, app_environment)
        assert "config.yml" in names  # it does see the sites' inputs (which it binds)
        assert not SECRETS & names, f"the fork-server sees {SECRETS & names}"
        inits = [pid for pid, args in below.items() if args.startswith("fedsim-site ")]
        assert len(inits) == 2, below
        site_uids = [_uids(pid) for pid in inits]
        assert all(len(u) == 1 and server_uid not in u and 0 not in u for u in site_uids)
        assert site_uids[0] != site_uids[1], "two sites share a uid"
    assert not [args for args in _children(os.getpid()).values() if "forkserver_main" in args]


def test_a_forked_app_stopped_twice_closes_nothing_of_anyone_else(tmp_path: Path) -> None:
    """A step is stopped more than once (by its poll, then by its placement): the second time
    must not close a descriptor number that something else has taken meanwhile."""
    forked = ForkSites(tmp_path)
    try:
        app, _lines = forked._spawn(make_site(tmp_path, "site-a"), "import time; time.sleep(60)")
        app.kill()
        read, write = os.pipe()  # likely the numbers the first kill gave back
        app.kill()
        os.fstat(read), os.fstat(write)  # still open
        os.close(read), os.close(write)
    finally:
        forked.server.close()


def test_an_environment_below_tmp_stays_whole_in_a_forked_site(
    tmp_path: Path, app_environment: Path
) -> None:
    """A site's own /tmp covers the server's; what the server's sandbox bound below /tmp (an
    app environment in a cache there, as CI or a user may keep it) must still be there for
    the app's later imports (pandas loads its CSV writer only when the app writes)."""
    cache = tmp_path / "cache"
    shutil.copytree(app_environment, cache / "envs" / app_environment.name, symlinks=True)
    csv = {"hub": "x,y\n1,2\n3,4\n", "clinic": "x,y\n5,9\n"}
    config = write_run(tmp_path, MEAN_APP, {n: {"files": {"data.csv": t}} for n, t in csv.items()})
    result = fedsim(
        "run", str(config), env={"FEDSIM_CACHE_DIR": str(cache), "FEDSIM_SITE_START": "fork"}
    )
    assert result.returncode == 0, result.stderr
    means = (run_dir_of(result) / "sites" / "clinic" / "output" / "means.csv").read_text()
    assert means.split() == ["column,mean", "x,3", "y,5"]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_forked_agents_are_their_sites_agents_and_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_environment: Path
) -> None:
    """Each agent is forked by the run's agent server: in network, pid and mount namespaces
    of its own (it reaches its app through its site's dialer), as a uid of its own (not the
    app's, not another site's), with no capability, no_new_privs and the filter; the token
    never touched a file and the server never saw a site's files. (As root: an ordinary
    user's agents keep that user's uid, and the hostile apps check them.)"""
    if os.geteuid() != 0:
        pytest.skip("the agents' own uids are root's runs'")
    marker = "fedsim.sites.agent_forkserver_main"
    with _hanging_fork_run(tmp_path, monkeypatch, marker) as (below, server, temp):
        server_view = _names_in_view(server, *fedsim_runtime_dirs())
        unseen = {"token", "launch.json", "shadow", "config.yml", "data.csv"}
        assert not unseen & server_view, unseen & server_view
        assert not Path(f"/proc/{server}/root/run/fedsim/relay.sock").is_socket()
        inits = {
            args.split()[1]: pid for pid, args in below.items() if args.startswith("fedsim-site ")
        }
        agents = {
            args.split()[3]: pid
            for pid, args in below.items()
            if args.startswith(f"{sys.executable} -m fedsim.agent ")
        }
        assert set(agents) == set(inits) == {"hub", "clinic"}, below
        seen_uids: set[int] = set()
        for site, agent in agents.items():
            init = inits[site]
            app = int(Path(f"/proc/{init}/task/{init}/children").read_text().split()[0])
            (uid,) = _uids(agent)
            assert uid >= FIRST_UID and uid not in _uids(app) | seen_uids
            seen_uids |= {uid, *_uids(app)}
            status = _status(agent)
            assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0" * 16
            assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
            ns = {k: os.readlink(f"/proc/{agent}/ns/{k}") for k in ("net", "pid", "mnt", "uts")}
            for kind in ("net", "pid", "mnt", "uts"):
                assert ns[kind] != os.readlink(f"/proc/{app}/ns/{kind}")
                assert ns[kind] != os.readlink(f"/proc/{server}/ns/{kind}")
            assert (Path(f"/proc/{agent}/root/run/fedsim/relay.sock")).is_socket()
        assert not list(temp.rglob("token")), "a forked agent's token was written to a file"
    assert not [args for args in _children(os.getpid()).values() if "fedsim.agent" in args]
