"""A hostile FeatureCloud app: it tries every way out of its site that fedsim must refuse.

Each attempt is a function that returns what it got; ``held`` means fedsim refused it. The
results go to /mnt/output/escapes.json, which the test reads; the app then finishes, so a
run that holds every escape also ends cleanly. config.yml:
    hostile:
      host_file: /host/path      # a world-readable file of the host (read it, if you can)
      other_input: /host/path    # another site's input file
      host_port: 12345           # a TCP port listening on the host's loopback
      linger: 3                  # seconds to stay alive at the end (host-side uid checks)
      attempts: [names]          # default: all
"""

import ctypes
import glob
import json
import os
import socket
import subprocess
import sys
import time

import yaml
from FeatureCloud.app.engine.app import AppState, app_state

OUTPUT_DIR = "/mnt/output"
libc = ctypes.CDLL(None, use_errno=True)
SYS = {
    "clone": 56,
    "ptrace": 101,
    "keyctl": 250,
    "bpf": 321,
    "unshare": 272,
    "mount": 165,
    "setns": 308,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
}
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
MS_REMOUNT, MS_BIND = 32, 4096


def config():
    with open("/mnt/input/config.yml") as handle:
        return yaml.safe_load(handle)["hostile"]


def syscall(name, *args):
    result = libc.syscall(SYS[name], *args)
    return result, ctypes.get_errno()


def refused(name, *args):
    result, err = syscall(name, *args)
    return result == -1, f"{name} returned {result} errno {err}"


def read_shadow(cfg):
    try:
        with open("/etc/shadow") as handle:
            return False, f"read {len(handle.read())} bytes"
    except OSError as exc:
        return True, repr(exc)


def read_host_file(cfg):
    paths = [cfg["host_file"], cfg["other_input"]]
    got = [p for p in paths if os.path.exists(p)]
    return not got, f"visible: {got}"


def write_system(cfg):
    wrote = []
    for path in ("/usr/fedsim-pwned", "/etc/fedsim-pwned", "/mnt/input/pwned", sys.prefix + "/x"):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            wrote.append(path)
        except OSError:
            pass
    return not wrote, f"wrote {wrote}"


def poison_env_cache(cfg):
    site_packages = glob.glob(sys.prefix + "/lib/python3*/site-packages")[0]
    try:
        with open(os.path.join(site_packages, "zz-fedsim-pwned.pth"), "w") as handle:
            handle.write("import os\n")
        return False, f"wrote a .pth into {site_packages}"
    except OSError as exc:
        return True, repr(exc)


def remount_writable(cfg):
    results = []
    for target in (b"/mnt/input", b"/usr", b"/"):
        result, err = syscall("mount", None, target, None, MS_REMOUNT | MS_BIND, None)
        results.append((target.decode(), result, err))
    return all(r == -1 for _, r, _ in results), f"{results}"


def write_sysctl(cfg):
    path = "/proc/sys/kernel/printk_ratelimit"  # written with its own value: harmless if open
    try:
        with open(path) as handle:
            value = handle.read()
        with open(path, "w") as handle:
            handle.write(value)
        return False, "wrote a host-wide sysctl"
    except OSError as exc:
        return True, repr(exc)


def capabilities(cfg):
    with open("/proc/self/status") as handle:
        status = handle.read().splitlines()
    caps = {line.split(":")[0]: line.split()[1] for line in status if line.startswith("Cap")}
    nnp = next(line.split()[1] for line in status if line.startswith("NoNewPrivs:"))
    held = all(int(v, 16) == 0 for k, v in caps.items() if k != "CapBnd") and nnp == "1"
    return held, f"{caps} NoNewPrivs={nnp}"


def become_root(cfg):
    try:
        os.setuid(0)
        return os.getuid() != 0 or os.geteuid() != 0, "setuid(0) worked"
    except OSError as exc:
        return True, repr(exc)


def host_environment(cfg):
    seen = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if b"FEDSIM_TEST_HOST_TOKEN" in handle.read():
                    seen.append(pid)
        except OSError:
            pass
    leaked = "FEDSIM_TEST_HOST_TOKEN" in os.environ
    return not seen and not leaked, f"in /proc environ of {seen}; in own env: {leaked}"


def agent_token(cfg):
    """The agent's token, config and relay socket: nowhere in this sandbox."""
    found = []
    for root in ("/run", "/tmp", "/var", "/app", "/mnt", "/root", "/home"):
        for path, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(path, d))]
            for name in files:
                if name in ("token", "agent.json", "relay.sock", "step-1.sock"):
                    found.append(os.path.join(path, name))
    return not found, f"found {found}"


def agent_processes(cfg):
    """Only this app's processes are visible: no agent to signal or trace."""
    mine = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                mine.append(handle.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    agents = [c for c in mine if "fedsim.agent" in c]
    return not agents, f"visible processes: {mine}"


def relay_from_mountinfo(cfg):
    """Host paths show in mountinfo; the relay socket's folder is not reachable by them."""
    reached = []
    with open("/proc/self/mountinfo") as handle:
        paths = [line.split()[3] for line in handle]
    candidates = set()
    for ancestor in paths:
        while ancestor not in ("/", ""):
            candidates.add(os.path.join(ancestor, "relay.sock"))
            candidates.add(os.path.join(ancestor, "step-1", "relay.sock"))
            candidates.add(os.path.join(ancestor, "relay", "step-1.sock"))
            ancestor = os.path.dirname(ancestor)
    for candidate in sorted(candidates):
        if os.path.exists(candidate):
            try:
                client = socket.socket(socket.AF_UNIX)
                client.connect(candidate)
                reached.append(candidate)
            except OSError:
                pass
    return not reached, f"reached {reached}"


def site_dialer(cfg):
    """The site's dialer, which the site's pid 1 holds to connect for its agent: no descriptor
    of this process is one, and pid 1 shows no socket and gives none (pidfd_getfd). (Where
    pid 1 is bubblewrap's, as an ordinary user's without a fork-server, its /dev/null, output
    pipe and eventfd show.)"""
    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET:
                held.append(name)
    try:
        listed = {n: os.readlink(f"/proc/1/fd/{n}") for n in os.listdir("/proc/1/fd")}
    except OSError:
        listed = {}
    sockets = {n: target for n, target in listed.items() if target.startswith("socket:")}
    taken = []
    pidfd, _ = syscall("pidfd_open", 1, 0)
    if pidfd >= 0:
        for number in range(64):
            fd, _ = syscall("pidfd_getfd", pidfd, number, 0)
            if fd >= 0:
                taken.append(number)
                os.close(fd)
        os.close(pidfd)
    return (
        not held and not sockets and not taken,
        f"holds {held}; pid 1's descriptors {listed}; took {taken}",
    )


def ptrace_anything(cfg):
    ok = []
    for pid in (1, os.getppid()):
        result, _ = syscall("ptrace", 16, pid, 0, 0)  # PTRACE_ATTACH
        if result != -1:
            ok.append(pid)
    return not ok, f"attached to {ok}"


def new_user_namespace(cfg):
    """By unshare, by the unshare tool, and by clone with CLONE_NEWUSER (as a fork would)."""
    held, detail = refused("unshare", CLONE_NEWUSER)
    tool = subprocess.run(["unshare", "-U", "true"], capture_output=True)
    child, err = syscall("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        os._exit(0)  # in the new namespace: the escape worked; the parent reports it
    if child > 0:
        os.waitpid(child, 0)
    cloned = child != -1
    return (
        held and tool.returncode != 0 and not cloned,
        f"{detail}; unshare -U: {tool.returncode}; clone(CLONE_NEWUSER): {child} errno {err}",
    )


def kernel_interfaces(cfg):
    checks = [refused("keyctl", 0, 0, 0, 0), refused("bpf", 0, 0, 0), refused("setns", 0, 0)]
    return all(c[0] for c in checks), "; ".join(c[1] for c in checks)


def host_network(cfg):
    reached = []
    for port in (cfg["host_port"], 22, 80):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            reached.append(port)
        except OSError:
            pass
    with open("/proc/net/dev") as handle:
        interfaces = sorted(line.split(":")[0].strip() for line in handle.read().splitlines()[2:])
    return not reached and interfaces == ["lo"], f"reached {reached}, interfaces {interfaces}"


def original_app(cfg):
    """/app is writable (as in a FeatureCloud container) but only this site's copy."""
    with open("/app/pwned.txt", "w") as handle:
        handle.write("written by a site")
    return True, "wrote /app/pwned.txt (the test checks the app folder is untouched)"


def output_links(cfg):
    """Links in the output pointing at host files: collection must skip them."""
    os.symlink(cfg["host_file"], os.path.join(OUTPUT_DIR, "host-file-link"))
    os.symlink(cfg["other_input"], os.path.join(OUTPUT_DIR, "other-input-link"))
    os.symlink("/", os.path.join(OUTPUT_DIR, "root-link"))
    os.mkfifo(os.path.join(OUTPUT_DIR, "a-fifo"))
    return True, "made links and a FIFO (the test checks the collected output)"


def fork_bomb(cfg):
    """Fork until refused: the site's process limit must stop it well before 2,000."""
    children = []
    try:
        for _ in range(2000):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError:
        pass
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return len(children) < 2000, f"forked {len(children)} processes"


def fill_tmp(cfg):
    written = 0
    chunk = b"x" * 2**20
    try:
        with open("/tmp/fill", "wb") as handle:
            while written < 2**30:
                handle.write(chunk)
                written += len(chunk)
                handle.flush()
    except OSError:
        pass
    finally:
        if os.path.exists("/tmp/fill"):
            os.remove("/tmp/fill")
    return written < 2**30, f"wrote {written >> 20} MiB to /tmp"


def allocate(cfg):
    """30 GB, touched page by page: the site must be stopped (or refused) on its way."""
    blocks = []
    for _ in range(30 * 16):
        blocks.append(bytearray(64 * 2**20))
    return False, f"allocated {len(blocks) * 64} MiB"


def big_output(cfg):
    """1.5 GiB of output in 16 MiB files, slowly enough for fedsim to notice."""
    chunk = b"y" * 16 * 2**20
    for i in range(96):
        with open(os.path.join(OUTPUT_DIR, f"big-{i}.bin"), "wb") as handle:
            handle.write(chunk)
        time.sleep(0.1)
    return False, "wrote 1.5 GiB of output"


def burn_cpu(cfg):
    """Two busy processes for two seconds: the site's cpu limit caps the time they get."""
    start = os.times()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + 2
            while time.monotonic() < end:
                pass
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    used = os.times().children_user - start.children_user
    return True, f"used {used:.2f} s of cpu in 2 s"


ATTEMPTS = {
    f.__name__: f
    for f in (
        read_shadow,
        read_host_file,
        write_system,
        poison_env_cache,
        remount_writable,
        write_sysctl,
        capabilities,
        become_root,
        host_environment,
        agent_token,
        agent_processes,
        relay_from_mountinfo,
        site_dialer,
        ptrace_anything,
        new_user_namespace,
        kernel_interfaces,
        host_network,
        original_app,
        output_links,
        fork_bomb,
        fill_tmp,
        allocate,
        big_output,
        burn_cpu,
    )
}


@app_state("initial")
class Escape(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        cfg = config()
        results = {"uid": os.getuid()}
        for name in cfg.get("attempts") or ATTEMPTS:
            try:
                held, detail = ATTEMPTS[name](cfg)
            except Exception as exc:  # an attempt that crashed was refused somewhere
                held, detail = True, f"raised {exc!r}"
            results[name] = {"held": held, "detail": detail}
        with open(os.path.join(OUTPUT_DIR, "escapes.json"), "w") as handle:
            json.dump(results, handle, indent=1)
        time.sleep(float(cfg.get("linger", 0)))
        return "terminal"
