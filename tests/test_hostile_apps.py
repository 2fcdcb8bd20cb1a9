"""Apps written to escape their site, run for real: every escape must be refused and the run
must still end cleanly. Run as root (what the README asks for) and as an ordinary user."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_dir_of, write_config
from tests.ordinary_user import TEST_UID, as_ordinary_user

pytestmark = pytest.mark.usefixtures("site_start")  # both start-ups of local sites

HOSTILE_APP = ROOT / "tests" / "apps" / "hostile"
HOST_SECRET = "HOST-SECRET-5b1e"
ESCAPES = [
    "read_shadow",
    "read_host_file",
    "write_system",
    "poison_env_cache",
    "remount_writable",
    "write_sysctl",
    "capabilities",
    "become_root",
    "host_environment",
    "agent_token",
    "agent_processes",
    "relay_from_mountinfo",
    "site_dialer",
    "ptrace_anything",
    "new_user_namespace",
    "kernel_interfaces",
    "host_network",
    "original_app",
    "output_links",
]


def hostile_run(
    tmp_path: Path,
    port: int,
    sites: int = 3,
    top: dict[str, object] | None = None,
    per_site: dict[int, dict[str, object]] | None = None,
    **extra: object,
) -> Path:
    """A config of ``sites`` hostile sites; each one's other_input is the next site's input.
    ``extra`` goes into every site's config.yml, ``per_site[i]`` into site i's only, and
    ``top`` into the run config."""
    app = tmp_path / "app"
    shutil.copytree(HOSTILE_APP, app)
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(HOST_SECRET)
    host_file.chmod(0o644)
    names = [f"site-{i}" for i in range(sites)]
    entries = []
    for i, name in enumerate(names):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        other = tmp_path / "data" / names[(i + 1) % sites] / "config.yml"
        cfg = {"host_file": str(host_file), "other_input": str(other), "host_port": port}
        cfg.update(extra)
        cfg.update((per_site or {}).get(i, {}))
        (data / "config.yml").write_text(yaml.safe_dump({"hostile": cfg}))
        entries.append({"name": name, "inputs": [f"data/{name}"], "coordinator": i == 0})
    return write_config(tmp_path, app, entries, **(top or {}))


def site_processes(marker: str) -> dict[str, dict[int, int]]:
    """pid -> uid (as the host sees them) of every app launcher and agent process of this
    test's run: those below a sandbox whose command line names ``marker`` (other runs may be
    going on)."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,uid=,args="], capture_output=True, text=True
    ).stdout
    procs: dict[int, tuple[int, int, str]] = {}
    for line in out.splitlines():
        pid, ppid, uid, *args = line.split(None, 3)
        procs[int(pid)] = (int(ppid), int(uid), args[0] if args else "")
    ours = {pid for pid, (_, _, args) in procs.items() if "bwrap" in args and marker in args}
    found: dict[str, dict[int, int]] = {"app": {}, "agent": {}}
    for pid, (_, uid, args) in procs.items():
        parent, seen = pid, 0
        while parent in procs and parent not in ours and seen < 64:
            parent, seen = procs[parent][0], seen + 1
        if parent not in ours:
            continue
        # the app's interpreter itself: the setpriv before it, which names the launcher too,
        # is root until it becomes the site's uid and execs the app (a slow machine shows it)
        words = args.split()
        if len(words) == 2 and words[1].endswith("fedsim-app/launcher.py"):
            found["app"][pid] = uid
        elif args.startswith(f"{sys.executable} -m fedsim.agent"):
            found["agent"][pid] = uid
    return found


def run_watched(
    tmp_path: Path,
    config: Path,
    as_user: tuple[list[str], dict[str, str]],
    watch: Callable[[dict[str, dict[int, int]]], None],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``fedsim run config`` (``as_user``: a command prefix and environment, see
    ``as_ordinary_user``), handing ``site_processes`` of the run to ``watch`` every 0.2 s
    while it goes on."""
    private = tmp_path / "private"
    private.mkdir()
    prefix, user_env = as_user
    if prefix:  # as_ordinary_user gave the rest of tmp_path to that user already
        os.chown(private, TEST_UID, TEST_UID)
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "fedsim", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            **user_env,
            **(env or {}),
            "TMPDIR": str(private),  # every sandbox of this run names it on its command line
        },
    )
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        watch(site_processes(str(private)))
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


NS_GET_PARENT = 0xB702  # ioctl on a namespace file: the namespace above it


def user_namespaces(pid: int) -> list[int]:
    """The user namespaces of ``pid``, its own first, then each one above it (inode numbers);
    empty if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
    except OSError:
        return []
    chain = []
    while True:
        chain.append(os.fstat(fd).st_ino)
        try:
            parent = fcntl.ioctl(fd, NS_GET_PARENT)
        except OSError:  # the top, or one this process may not see above
            break
        finally:
            os.close(fd)
        fd = parent
    return chain


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder an ordinary user can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fedsim-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("who", ["root", "user"])
def test_every_escape_is_refused_and_the_run_ends_cleanly(
    open_tmp: Path, host_listener: int, app_environment: Path, who: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to compare root and ordinary-user runs")
    tmp_path = open_tmp
    config = hostile_run(tmp_path, host_listener, linger=4, attempts=ESCAPES)
    as_user = ([], {}) if who == "root" else as_ordinary_user(tmp_path, app_environment)
    seen: dict[str, set[int]] = {"app": set(), "agent": set()}

    def note_uids(processes: dict[str, dict[int, int]]) -> None:
        for kind, uids in processes.items():
            seen[kind] |= set(uids.values())

    result = run_watched(
        tmp_path, config, as_user, note_uids, env={"FEDSIM_TEST_HOST_TOKEN": "do-not-leak"}
    )
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    for i in range(3):
        escapes = json.loads(
            (run_dir / "sites" / f"site-{i}" / "output" / "escapes.json").read_text()
        )
        escaped = {k: v["detail"] for k, v in escapes.items() if k != "uid" and not v["held"]}
        assert not escaped, f"site-{i} ({who}) escaped: {escaped}"
    # the host's view of who ran the sites
    assert seen["app"] and seen["agent"], f"no site process seen from the host: {seen}"
    assert 0 not in seen["app"] | seen["agent"], f"a site ran as root: {seen}"
    if who == "root":
        assert len(seen["app"]) == 3, f"each site's app needs its own uid: {seen}"
        assert not seen["app"] & seen["agent"], f"app and agent share a uid: {seen}"
    else:
        assert seen["app"] == seen["agent"] == {TEST_UID}
    # /app was writable, but only a copy: the app folder is untouched
    assert not (tmp_path / "app" / "pwned.txt").exists()
    # nothing of the host or of another site was collected
    for i in range(3):
        site_dir = run_dir / "sites" / f"site-{i}"
        with zipfile.ZipFile(site_dir / "results.zip") as archive:
            names = archive.namelist()
            content = b"".join(archive.read(n) for n in names)
        assert HOST_SECRET.encode() not in content
        other = tmp_path / "data" / f"site-{(i + 1) % 3}" / "config.yml"
        assert other.read_bytes() not in content
        assert not {"host-file-link", "other-input-link", "root-link", "a-fifo"} & set(names)


def test_an_ordinary_users_sites_each_count_their_own_processes(
    open_tmp: Path, app_environment: Path
) -> None:
    """The kernel counts a uid's processes against its limit per user namespace, and an
    ordinary user's sites all run as that user: each site still has a count of its own, so
    that many sites fit under one site's limit and a fork bomb in one leaves the others
    theirs. Eight sites of five or more processes and threads each, at 16 a site. No agent's
    user namespace is below its app's, where the app would hold every capability over it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become the ordinary user")
    tmp_path = open_tmp
    config = hostile_run(
        tmp_path,
        port=1,
        sites=8,
        top={"limits": {"processes": 16}},
        attempts=["fork_bomb"],
        linger=3,
    )
    chains: dict[str, dict[int, list[int]]] = {"app": {}, "agent": {}}

    def note_chains(processes: dict[str, dict[int, int]]) -> None:
        for kind, pids in processes.items():
            for pid in pids:
                chains[kind].setdefault(pid, user_namespaces(pid))

    as_user = as_ordinary_user(tmp_path, app_environment)
    result = run_watched(tmp_path, config, as_user, note_chains, timeout=240)
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    for i in range(8):
        seen = json.loads((run_dir / "sites" / f"site-{i}" / "output" / "escapes.json").read_text())
        forked = int(seen["fork_bomb"]["detail"].split()[1])
        assert 0 < forked < 16, (f"site-{i}", seen["fork_bomb"])
    apps = {chain[0] for chain in chains["app"].values() if chain}
    assert len(apps) == 8, f"each site's app needs a user namespace of its own: {chains}"
    above_an_app = [c for c in chains["agent"].values() if set(c) & apps]
    assert chains["agent"] and not above_an_app, f"an agent below its app: {above_an_app}"
