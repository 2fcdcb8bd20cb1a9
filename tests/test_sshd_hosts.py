"""The sshd test hosts themselves: SSH placement's tests rely on every property checked here
(separate machines in all but hardware, no route between them, reverse forwards to a Unix
socket, a link that can vanish, nothing left behind)."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.sshd_hosts import (
    FOLDER_PREFIX,
    NETNS_DIR,
    PREFIX,
    SshHost,
    SshNetwork,
    ssh_network,
    sweep_stale,
    write_ssh_config,
)

# A TCP connect run on a host: prints "connected" or the errno's name.
CONNECT = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], 22), timeout=5).close()
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, repr(e)))
"""


def remote_python(code: str, *args: str) -> str:
    """A remote command line running ``code`` with the host's own python3."""
    return shlex.join(["python3", "-c", code, *args])


def our_netns() -> list[str]:
    """Namespaces of this test process's networks (other checkouts may run their own)."""
    names = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
    return [n for n in names if n.startswith(f"{PREFIX}{os.getpid()}-")]


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if text in line]


def test_two_hosts_are_separate_machines(ssh_hosts: SshNetwork, tmp_path: Path) -> None:
    """Each host answers with its own name, logs in as root with the test's key only, and sees
    none of the orchestrator's files: not /work, not the test's folders, not root's home."""
    a, b = ssh_hosts(2)
    assert a.address != b.address
    marker = tmp_path / "orchestrator-only"
    marker.write_text("secret")
    probe = (
        "hostname; id -u; echo work: $(ls -A /work | wc -l); "
        f"test -e {shlex.quote(str(marker))} && echo marker-visible; "
        # the checkout's folder may exist there as an empty mount point: its files must not
        f"test -e {shlex.quote(str(ROOT / 'pyproject.toml'))} && echo checkout-visible; "
        "echo home: $HOME $(ls -A ~); echo pids: $(ls /proc | grep -c '^[0-9]'); "
        "echo hi > ~/left-by-site"
    )
    for host in (a, b):
        result = host.ssh(probe)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == host.hostname
        assert lines[1] == "0"
        assert "work: 0" in lines
        assert "marker-visible" not in lines and "checkout-visible" not in lines
        assert "home: /root .ssh" in lines  # its own home, not the orchestrator's /root
        pids = int(next(x for x in lines if x.startswith("pids:")).split()[1])
        assert pids < 20, "the host sees the machine's processes"
        # what a site leaves in its home is there for the test to check
        assert (host.home / "left-by-site").read_text() == "hi\n"
    assert (a.home / "left-by-site") != (b.home / "left-by-site")


def test_known_hosts_and_key_are_checked(ssh_hosts: SshNetwork, tmp_path: Path) -> None:
    """An unknown host key or another client key is refused: BatchMode never prompts."""
    (host,) = ssh_hosts(1)
    empty = tmp_path / "known_hosts"
    empty.touch()
    result = host.ssh("true", options=["-o", f"UserKnownHostsFile={empty}"])
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    argv = host.ssh_argv("true")
    argv[argv.index(str(host.key))] = str(other)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_ssh_config_aliases(ssh_hosts: SshNetwork, tmp_path: Path) -> None:
    """An ~/.ssh/config alias resolves to the host's address, port, user, key, known_hosts."""
    a, b = ssh_hosts(2)
    config = write_ssh_config(tmp_path / "ssh" / "config", {"clinic": a, "lab": b})
    resolved = subprocess.run(
        ["ssh", "-F", str(config), "-G", "clinic"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert f"hostname {a.address}" in resolved
    assert "port 22" in resolved and "user root" in resolved
    for alias, host in (("clinic", a), ("lab", b)):
        result = subprocess.run(
            ssh_hosts.in_hub(["ssh", "-F", str(config), alias, "hostname"]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == host.hostname


def test_hosts_cannot_reach_each_other(ssh_hosts: SshNetwork) -> None:
    """A cannot connect to B, with IP forwarding on in the hub, and still not when A's root
    adds a route to B through the hub; lifting the hub's rules (the control) lets it through,
    so it is the rules, not a missing route alone, that keep sites apart."""
    a, b = ssh_hosts(2)
    subprocess.run(ssh_hosts.in_hub(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]), check=True)

    def a_connects_to_b() -> str:
        result = a.ssh(remote_python(CONNECT, b.address))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert a_connects_to_b() == "ENETUNREACH"  # no route on A at all
    # what a hostile site's root could do on its own machine, on both ends
    for src, dst in ((a, b), (b, a)):
        route = f"ip route add {dst.address}/32 via {src.hub_address}"
        assert src.ssh(route).returncode == 0
    # the hub answers "prohibited" (ICMP), which A's connect reports as EHOSTUNREACH
    assert a_connects_to_b() == "EHOSTUNREACH"

    for host in (a, b):
        rule = ["ip", "-n", ssh_hosts.hub, "rule", "del", "pref", "100", "iif", host.hub_link]
        subprocess.run(rule, check=True)
    assert a_connects_to_b() == "connected"


class EchoServer:
    """A Unix-socket server that sends back what it receives, prefixed: the relay's stand-in."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def echo_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "echo.sock"
    server = EchoServer(path)
    yield path
    server.close()


USE_FORWARD = """
import socket, sys, time
deadline = time.monotonic() + 20
while True:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        s.close()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
s.sendall(b"ping")
print(s.recv(1024).decode())
"""


def test_unix_socket_reverse_forward(ssh_hosts: SshNetwork, echo_socket: Path) -> None:
    """``ssh -R /tmp/x.sock:LOCAL.sock``: a process on the host reaches a Unix socket of the
    orchestrator through its own /tmp, as a site's agent will reach the relay."""
    (host,) = ssh_hosts(1)
    remote = "/tmp/relay.sock"
    options = ["-o", "ExitOnForwardFailure=yes", "-R", f"{remote}:{echo_socket}"]
    result = host.ssh(remote_python(USE_FORWARD, remote), options=options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "echo:ping"
    # it lived in the host's own /tmp: the orchestrator's /tmp has no such socket
    assert not Path(remote).exists()


def test_cut_link_hangs_the_session(ssh_hosts: SshNetwork) -> None:
    """A cut link is silence, not a polite close: the session stays until the client's
    keepalives go unanswered (3 x 1 s), then ssh gives up with a timeout. Restored, the
    host answers again."""
    (host,) = ssh_hosts(1)
    keepalive = [
        "-o",
        "ServerAliveInterval=1",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "LogLevel=INFO",
    ]
    session = subprocess.Popen(
        host.ssh_argv("echo ready; exec sleep 120", options=keepalive),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline().strip() == "ready"
        host.cut_link()
        cut = time.monotonic()
        try:
            _, stderr = session.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the session outlived its keepalives: was the link cut?")
        waited = time.monotonic() - cut
    finally:
        session.kill()
        session.wait()
    assert session.returncode == 255
    assert "Timeout, server" in stderr and "not responding" in stderr, stderr
    assert waited >= 2.5, f"ended after {waited:.1f} s: closed, not vanished"

    host.restore_link()
    result = host.ssh("hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == host.hostname


def test_teardown_leaves_nothing_even_when_the_test_fails() -> None:
    """After a failing block: no namespace, no sshd, no process the test started in the
    namespaces (a session, a command run inside a host), no temporary folder."""
    started: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="the test failed"), ssh_network() as net:
        hosts = net(2)
        tag, root = net.tag, net.root
        sshd_pids = [p for h in hosts for p in _sshd_pids(h)]
        assert len(sshd_pids) == 2 and processes_mentioning(tag)
        for host in hosts:
            started.append(
                subprocess.Popen(
                    host.ssh_argv("exec sleep 300"),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            started.append(
                subprocess.Popen(["ip", "netns", "exec", host.namespace, "sleep", "300"])
            )
        time.sleep(0.5)  # let the sessions log in
        raise RuntimeError("the test failed")
    for process in started:  # ended by the teardown: killed, or ssh seeing its host die
        assert process.wait(timeout=5) in {-9, 255}
    assert our_netns() == []
    assert processes_mentioning(tag) == []
    for pid in sshd_pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not root.exists()


def _sshd_pids(host: SshHost) -> list[int]:
    """The host's sshd as the machine sees it (its PID namespace calls it 1)."""
    assert host.process is not None
    return [
        int(line.split()[0])
        for line in processes_mentioning(f"/run/{host.namespace}/sshd_config")
        if line.split()[2].startswith(("sshd:", "/usr/sbin/sshd"))
    ]


def test_stale_namespaces_of_a_killed_run_are_swept() -> None:
    """A test process killed outright runs no teardown; the next run removes what it left,
    and only that: a namespace of a live process is kept."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-000000-hub"
    live = f"{PREFIX}{os.getpid()}-ffffff-hub"
    stale_folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{dead.pid}-000000-"))
    live_folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-ffffff-"))
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        sweep_stale()
        names = os.listdir(NETNS_DIR)
        assert stale not in names and not stale_folder.exists()
        assert live in names and live_folder.exists()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        for folder in (stale_folder, live_folder):
            shutil.rmtree(folder, ignore_errors=True)
