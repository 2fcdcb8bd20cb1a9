"""Real OpenSSH hosts for the tests, each in network, mount, PID and UTS namespaces of its own.

Why: SSH placement must be tested against a real ``sshd`` on what looks like another machine:
its own address, its own files, its own processes. A mock would not catch fedsim leaning on a
host path or on the orchestrator's network.

The layout, all made by the test and torn down after it::

    test's process (root netns, untouched)
      `-- hub netns "fedsim-test-<pid>-<tag>-hub": lo, hN (10.231.N.1/30) per host
            `-- host netns "fedsim-test-<pid>-<tag>-hN": lo, eth0 (10.231.N.2/30), sshd on :22

The root network namespace gets no address, route, link or sysctl change: the hub stands for
the orchestrator's network, so the SSH client (and later fedsim itself) runs in it through
``ip netns exec HUB`` (:meth:`SshNetwork.in_hub`). Nothing in these namespaces is linked to a
real interface, so no packet can leave them. The hub never forwards between hosts, even with
``ip_forward`` on: a policy rule prohibits routing anything that came in from a host link.

Each sshd runs under ``unshare --mount --pid --uts --kill-child``: of the orchestrator's root
only the system folders stay (/usr, /etc, /var...); every other top-level folder (/work, /home,
/opt, wherever the checkout was cloned), /tmp, /var/tmp, /dev/shm and /run are fresh tmpfs there
and root's home is the host's own folder, so a "remote" site cannot see the orchestrator's
files (this hides them from mistakes, not from a hostile root, who could unmount them). Its
processes die with the PID namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "fedsim-test-"  # network namespaces: fedsim-test-<pid>-<tag>-hub, -h0, -h1, ...
FOLDER_PREFIX = "fedsim-sshd-"  # temporary folders (other tests use fedsim-test-XXXX ones)
NETNS_DIR = Path("/run/netns")
SSHD = "/usr/sbin/sshd"
SUBNET = "10.231"  # host N gets 10.231.N.0/30: .1 on the hub's side, .2 on the host's
# What a host keeps of the orchestrator's root: the system. Every other top-level folder (/work,
# /home, /opt, /srv, wherever CI cloned the checkout...) is an empty tmpfs on the host, and
# every other top-level file is empty.
SYSTEM = ("bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin")
SYSTEM += ("sys", "usr", "var")
# fresh tmpfs within the system folders, with the mode each has on Debian
HIDDEN = {"/tmp": "1777", "/var/tmp": "1777", "/dev/shm": "1777"}
CHECKOUT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0  # sshd starts in milliseconds; the slack is for a loaded machine
STOP_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1


class SshHostsError(RuntimeError):
    """Setting up or tearing down the test hosts failed (with what the commands said)."""


def run_command(
    *argv: str, timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A set-up command, its output captured so a failure says what went wrong."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise SshHostsError(
            f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: after fork, only a call


def _keygen(path: Path, comment: str) -> None:
    """An ed25519 key pair without passphrase: made per test, never the machine's keys."""
    run_command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def die_with_parent() -> None:
    """Runs in the child before exec: if the test's process dies (even by SIGKILL), so does
    the child, so no sshd outlives a killed pytest (its namespaces are swept on the next run)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _netns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (what ``ip netns pids`` reports)."""
    ident = _netns_inode(name)
    if ident is None:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            pids.append(int(entry.name))
    return pids


def _kill_in_netns(name: str, pid: int) -> None:
    """SIGKILL ``pid`` only if it is still a process in our namespace: the pidfd pins the
    process, so a pid reused by an unrelated process meanwhile is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
        if (st.st_dev, st.st_ino) == _netns_inode(name):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass
    finally:
        os.close(fd)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (read from /proc/*/stat: needs no CONFIG_PROC_CHILDREN)."""
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _empty_netns(name: str, deadline: float) -> list[int]:
    """Kill every process in netns ``name`` until none is left; what is left at ``deadline``.

    A zombie has no namespaces any more (its /proc/PID/ns links are gone), so it is not
    counted: it runs nothing and holds nothing, and its parent or init reaps it.
    """
    while True:
        pids = pids_in_netns(name)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            _kill_in_netns(name, pid)
        time.sleep(0.05)


def delete_netns(name: str, deadline: float) -> str | None:
    """Kill what runs in netns ``name``, then delete it; an error message or None."""
    left = _empty_netns(name, deadline)
    if left:
        return f"netns {name}: processes {left} still running after SIGKILL"
    if _netns_inode(name) is None:
        return None
    result = run_command("ip", "netns", "delete", name, check=False)
    if result.returncode != 0 and _netns_inode(name) is not None:
        return f"ip netns delete {name}: {result.stderr.strip()}"
    return None


def sweep_stale() -> None:
    """Delete namespaces and folders left by an earlier test process that was killed outright
    (no teardown ran). Only names carrying the pid of a process that no longer exists: a run
    still going, of this suite or of another checkout, is never touched."""
    names = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
    for name in names:
        match = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if match and not _alive(int(match.group(1))):
            delete_netns(name, time.monotonic() + STOP_TIMEOUT)
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        match = re.fullmatch(rf"{FOLDER_PREFIX}(\d+)-.*", folder.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class NetHost:
    """A namespace linked to the hub and nothing else: what looks like another machine on
    the network (for processes the test starts in it with ``ip netns exec``)."""

    namespace: str
    address: str
    hub_address: str
    hub_link: str
    link: str = "eth0"

    def run_in(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in this host's network."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class SshHost:
    """One sshd host as the tests see it: where it is, how to log in, and its link.

    ``home`` is the login user's home on the host, seen from the test (the host sees it as
    ``/root``), so a test can check what a site left there.
    """

    alias: str
    namespace: str
    hub: str
    address: str
    hub_address: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    home: Path
    hostname: str
    log: Path
    hub_link: str
    link: str = "eth0"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.address}"

    def ssh_options(self) -> list[str]:
        """Options that make ``ssh`` use this test's key and known_hosts and nothing of the
        machine's (no ~/.ssh/config, no agent, no password prompt)."""
        return [
            "-F",
            "none",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=15",
            "-o",
            "LogLevel=ERROR",
        ]

    def ssh_argv(self, *command: str, options: Sequence[str] = ()) -> list[str]:
        """The argv of ``ssh`` to this host run from the hub (the orchestrator's network)."""
        return [
            "ip",
            "netns",
            "exec",
            self.hub,
            "ssh",
            *options,  # first: ssh keeps the first value it is given for an option
            *self.ssh_options(),
            self.destination,
            *command,
        ]

    def ssh(
        self, *command: str, options: Sequence[str] = (), timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the host over ssh (a remote shell line, as ssh joins it)."""
        return subprocess.run(
            self.ssh_argv(*command, options=options),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def cut_link(self) -> None:
        """The host vanishes: its end of the link goes down, so whatever the hub sends it is
        dropped without a word (no RST, no FIN, no ICMP), as when a machine loses power or a
        cable. Established sessions hang until a keepalive or timeout gives up on them."""
        run_command("ip", "-n", self.namespace, "link", "set", self.link, "down")

    def restore_link(self) -> None:
        """The host is back on the same address; returns once the hub sees the carrier.

        Both sides forget their failed address resolution: an entry still resolving when the
        link came back could otherwise fail the first new connection with "No route to host".
        """
        run_command("ip", "-n", self.namespace, "link", "set", self.link, "up")
        run_command("ip", "-n", self.hub, "neigh", "flush", "dev", self.hub_link)
        run_command("ip", "-n", self.namespace, "neigh", "flush", "dev", self.link)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            out = run_command("ip", "-n", self.hub, "-o", "link", "show", self.hub_link).stdout
            if "LOWER_UP" in out:
                return
            if time.monotonic() > deadline:
                raise SshHostsError(f"{self.alias}: link not back up: {out.strip()}")
            time.sleep(0.05)


class SshNetwork:
    """A hub namespace and any number of sshd hosts behind it; a context manager.

    ``network(n)`` adds n hosts and returns them. Leaving the context (or :meth:`close`)
    tears everything down whatever happened: every process in the namespaces is killed,
    the namespaces are deleted, the temporary folder removed; what could not be removed is
    raised as :class:`SshHostsError`, so a leak fails the test instead of passing silently.
    """

    def __init__(self, user: str = "root") -> None:
        if user != "root":
            raise ValueError("the hosts log in as root (their home is their own folder)")
        sweep_stale()
        self.user = user
        self.tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.hub = f"{PREFIX}{self.tag}-hub"
        self.namespaces: list[str] = []
        self.hosts: list[SshHost] = []
        self.plain_hosts: list[NetHost] = []
        self.closed = False
        self.root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{self.tag}-"))
        try:
            self._add_netns(self.hub)
            self.key = self.root / "client_ed25519"
            _keygen(self.key, "fedsim-test")
            self.known_hosts = self.root / "known_hosts"
            self.known_hosts.touch()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SshNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, n: int) -> list[SshHost]:
        return self.add_hosts(n)

    def in_hub(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the hub, the network from which the hosts are reachable."""
        return ["ip", "netns", "exec", self.hub, *argv]

    def _add_netns(self, name: str) -> None:
        """Create netns ``name`` with loopback up, IPv6 off and no forwarding: a new netns
        copies IPv4 settings (ip_forward among them) from the machine's, so say them."""
        self.namespaces.append(name)  # before creating: a half-made one is torn down too
        run_command("ip", "netns", "add", name)
        run_command(
            "ip",
            "netns",
            "exec",
            name,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=0",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )
        run_command("ip", "-n", name, "link", "set", "lo", "up")

    def _link(self, host: NetHost) -> None:
        """``host``'s namespace made and joined to the hub by a link of its own."""
        namespace = host.namespace
        self._add_netns(namespace)
        hub, link = host.hub_link, host.link
        veth = ["type", "veth", "peer", "name", link, "netns", namespace]
        run_command("ip", "-n", self.hub, "link", "add", hub, *veth)
        run_command("ip", "-n", self.hub, "addr", "add", f"{host.hub_address}/30", "dev", hub)
        run_command("ip", "-n", namespace, "addr", "add", f"{host.address}/30", "dev", link)
        run_command("ip", "-n", self.hub, "link", "set", hub, "up")
        run_command("ip", "-n", namespace, "link", "set", link, "up")
        # Anything that arrives from a host and is not for the hub itself (the local
        # table, pref 0, answers that first) is refused, whatever ip_forward says.
        run_command("ip", "-n", self.hub, "rule", "add", "pref", "100", "iif", hub, "prohibit")

    def add_plain_hosts(self, n: int) -> list[NetHost]:
        """``n`` namespaces without sshd, each routed to every address of the hub (so one
        hub address, such as a relay's, serves them all) and to nothing else; the test
        starts its own processes there (``NetHost.run_in``). Torn down with the network."""
        if self.closed:
            raise SshHostsError("this network is closed")
        new = []
        try:
            for _ in range(n):
                index = len(self.hosts) + len(self.plain_hosts)
                if index > 250:
                    raise SshHostsError("at most 251 hosts per network")
                host = NetHost(
                    f"{PREFIX}{self.tag}-p{index}",
                    f"{SUBNET}.{index}.2",
                    f"{SUBNET}.{index}.1",
                    f"h{index}",
                )
                self.plain_hosts.append(host)
                self._link(host)
                run_command(
                    "ip", "-n", host.namespace, "route", "add", "default", "via", host.hub_address
                )
                new.append(host)
        except BaseException:
            self.close()
            raise
        return new

    def add_hosts(self, n: int, without: Sequence[str] = ()) -> list[SshHost]:
        """Start ``n`` more hosts (concurrently) and return them once each sshd listens.
        ``without``: programs (absolute paths) these hosts lack: each is masked there."""
        if self.closed:
            raise SshHostsError("this network is closed")
        new: list[SshHost] = []
        try:
            for _ in range(n):
                new.append(self._create_host(len(self.hosts)))
            for host in new:
                self._start_sshd(host, without)
            for host in new:
                self._wait_ready(host)
        except BaseException:
            self.close()
            raise
        return new

    def _create_host(self, index: int) -> SshHost:
        index += len(self.plain_hosts)  # one subnet per link, whatever its kind
        if index > 250:
            raise SshHostsError("at most 251 hosts per network")
        alias = f"host{index}"
        namespace = f"{PREFIX}{self.tag}-h{index}"
        state = self.root / alias
        home = state / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        host = SshHost(
            alias=alias,
            namespace=namespace,
            hub=self.hub,
            address=f"{SUBNET}.{index}.2",
            hub_address=f"{SUBNET}.{index}.1",
            port=22,
            user=self.user,
            key=self.key,
            known_hosts=self.known_hosts,
            home=home,
            hostname=f"fedsim-{alias}",
            log=state / "sshd.log",
            hub_link=f"h{index}",
        )
        self.hosts.append(host)  # before anything is made: close() then finds all of it
        self._link(NetHost(namespace, host.address, host.hub_address, host.hub_link))

        host_key = state / "ssh_host_ed25519_key"
        _keygen(host_key, alias)
        public = host_key.with_suffix(".pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"{host.address} {public[0]} {public[1]}\n")
        authorized = home / ".ssh" / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        inside = self._inside(namespace)
        (state / "sshd_config").write_text(_sshd_config(inside))
        return host

    @staticmethod
    def _inside(namespace: str) -> str:
        """Where the host's state folder appears inside its mount namespace: under /run,
        named after the namespace so ``ps`` tells one test's sshd from another's."""
        return f"/run/{namespace}"

    def _start_sshd(self, host: SshHost, without: Sequence[str] = ()) -> None:
        state = host.home.parent
        inside = self._inside(host.namespace)
        hide = "\n".join(
            f"if [ -d {d} ]; then mount -t tmpfs -o mode={mode} fedsim-hidden {d}; fi"
            for d, mode in HIDDEN.items()
        )
        system = " ".join(f"/{name}" for name in SYSTEM)
        # an empty, non-executable file in its place: `command -v` and `which` miss it
        mask = "\n".join(f"mount --bind /dev/null {shlex.quote(p)}" for p in without)
        checkout = shlex.quote(str(CHECKOUT))
        script = f"""set -eu
mount -t tmpfs -o mode=0755 fedsim-run /run
mkdir -p /run/sshd {inside}
mount --bind {shlex.quote(str(state))} {inside}
if [ -d {checkout} ]; then mount -t tmpfs -o mode=0755 fedsim-hidden {checkout}; fi
for entry in /* /.[!.]*; do
    case " {system} " in *" $entry "*) continue ;; esac
    if [ -L "$entry" ]; then continue; fi
    if [ -d "$entry" ]; then mount -t tmpfs -o mode=0755 fedsim-hidden "$entry"
    elif [ -f "$entry" ]; then mount --bind /dev/null "$entry"; fi
done
{hide}
{mask}
mount --bind {inside}/home /root
hostname {host.hostname}
exec {SSHD} -D -e -f {inside}/sshd_config
"""
        log = host.log.open("wb")
        try:
            host.process = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.namespace,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child",
                    "sh",
                    "-c",
                    script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def _wait_ready(self, host: SshHost) -> None:
        """sshd writes its PidFile only once it listens, so its existence means ready."""
        pidfile = host.home.parent / "sshd.pid"
        deadline = time.monotonic() + START_TIMEOUT
        assert host.process is not None
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if host.process.poll() is not None:
                raise SshHostsError(
                    f"{host.alias}: sshd exited {host.process.returncode}:\n{_tail(host.log)}"
                )
            if time.monotonic() > deadline:
                raise SshHostsError(f"{host.alias}: sshd not ready in time:\n{_tail(host.log)}")
            time.sleep(0.02)

    def write_ssh_config(self, path: Path, aliases: Mapping[str, SshHost] | None = None) -> Path:
        """An OpenSSH client config with one ``Host`` block per alias (default: each host's
        own alias); see :func:`write_ssh_config`."""
        return write_ssh_config(path, aliases or {h.alias: h for h in self.hosts})

    def close(self) -> None:
        """Tear everything down; safe to call twice and after a partial set-up."""
        if self.closed:
            return
        self.closed = True
        problems: list[str] = []
        deadline = time.monotonic() + STOP_TIMEOUT
        # Each sshd first, through the first process of its PID namespace: its death kills
        # the whole namespace (sessions and what they started), and unshare, its parent,
        # reaps it, so no zombie is left for the machine's init.
        for host in self.hosts:
            if host.process is None:
                continue
            for pid in _children(host.process.pid):
                _kill_in_netns(host.namespace, pid)
            try:
                host.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                host.process.kill()  # its child then dies by --kill-child's PDEATHSIG
                try:
                    host.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    problems.append(f"{host.alias}: unshare (pid {host.process.pid}) hangs")
        # Then whatever else the test ran in the namespaces (ssh clients in the hub, commands
        # run with ip netns exec), and the namespaces themselves, the hub last.
        for name in [*self.namespaces[1:], *self.namespaces[:1]]:
            try:
                problem = delete_netns(name, deadline)
            except Exception as e:  # keep going: every namespace gets its chance
                problem = f"netns {name}: {e!r}"
            if problem:
                problems.append(problem)
        try:
            shutil.rmtree(self.root)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOENT:
                problems.append(f"removing {self.root}: {e}")
        if problems:
            raise SshHostsError("teardown left things behind:\n" + "\n".join(problems))


def _sshd_config(inside: str) -> str:
    """Key login only, for root (no password, no PAM, no DNS), forwarding on: fedsim's relay
    reaches a site through a reverse forward that ends in a Unix socket at the site."""
    return f"""\
Port 22
ListenAddress 0.0.0.0
HostKey {inside}/ssh_host_ed25519_key
PidFile {inside}/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
GatewayPorts no
X11Forwarding no
PermitTunnel no
PrintMotd no
PrintLastLog no
LoginGraceTime 60
MaxStartups 100:30:200
Subsystem sftp internal-sftp
"""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def write_ssh_config(path: Path, aliases: Mapping[str, SshHost]) -> Path:
    """Write an OpenSSH client config: per alias, HostName/Port/User/IdentityFile/
    UserKnownHostsFile of its host, so tests can check that ``HOST`` in ``ssh://HOST`` is
    resolved through ``~/.ssh/config`` as OpenSSH does."""
    blocks = []
    for alias, host in aliases.items():
        blocks.append(
            f"Host {alias}\n"
            f"    HostName {host.address}\n"
            f"    Port {host.port}\n"
            f"    User {host.user}\n"
            f"    IdentityFile {host.key}\n"
            f"    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {host.known_hosts}\n"
            f"    GlobalKnownHostsFile /dev/null\n"
            f"    StrictHostKeyChecking yes\n"
            f"    BatchMode yes\n"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(blocks))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def ssh_network(user: str = "root") -> Iterator[SshNetwork]:
    """``with ssh_network() as net: a, b = net(2)``: hosts that are gone after the block."""
    network = SshNetwork(user)
    try:
        yield network
    finally:
        network.close()
