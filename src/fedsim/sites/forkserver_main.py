"""The fork-server: one per app environment, it imports the environment's libraries once and
forks every site's app from there, so that sites share those pages copy-on-write.

Runs under the app environment's interpreter inside its own bubblewrap sandbox (see
``sites/forkserver.py``), so it uses the standard library only, as old a part of it as
``agent/app_launcher.py`` does (apps pinned to their era bring old interpreters), and it
never imports an app's own modules. A forked child takes its site's place before any app
code runs: new mount, pid, uts, ipc and network namespaces; its own ``/app``, ``/mnt/input``
and ``/mnt/output``, the folders shared by all sites covered; the site's hostname, ``/etc``
identity, ``/tmp`` and secrets; a fresh ``/proc``; then (in the site's cgroup, placed by
fedsim) the site's uid, no capabilities, ``no_new_privs``, the rlimits and the seccomp
filter; only then the app.

Inside a child the server's own user namespace is the one everything is made in: as root,
fedsim maps the run's block of uids into it (the server runs as one of them, so it is no one
on the host); as an ordinary user, bubblewrap's namespace maps that user only, and each site
makes a user namespace of its own below it first (``own_user_namespace`` says why).

Messages are datagrams on ``SOCK_SEQPACKET`` sockets. On the control socket: the server
says ``map`` (root: fedsim writes its uid map) and then ``ready``; fedsim sends one JSON
request per site with its status socket, its output pipe, its dialer's socket and, if any,
its secrets file. On the status socket the site's pid 1 says ``ready`` (the kernel attaches
its pid as fedsim sees it), waits for ``go`` (fedsim has put it in the site's cgroup) and
says ``exit N`` when the app has ended; a setup failure says ``error ...``. On the dialer's
socket the agent asks ``ADDRESS PORT`` and pid 1 answers (``dial``).
"""

import contextlib
import ctypes
import errno
import gc
import importlib
import io
import json
import os
import resource
import runpy
import select
import signal
import socket
import struct
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
DIAL_TIMEOUT = 5.0
"""How long the site's pid 1 tries to connect for its agent (on loopback: at once)."""
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 22, 38
SECCOMP_MODE_FILTER = 2
CAP_VERSION_3 = 0x20080522
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
STATVFS_FLAGS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC}
"""``statvfs`` f_flag bits -> mount flags that a bind remount must keep when they are locked."""

SITES = "/run/fedsim-sites"
OUTPUTS = "/run/fedsim-outputs"
HERE = "/run/fedsim-fork"
SECCOMP = HERE + "/seccomp.bpf"
APP_RUN = "/run/fedsim-app"
IDENTITY = ("passwd", "group", "hosts", "hostname")
PROC_COVERED = ("sys", "sysrq-trigger", "irq", "bus")
"""What a site sees of ``/proc`` read-only (as bubblewrap does)."""
PRELOAD = (
    "numpy",
    "pandas",
    "yaml",
    "bottle",
    "FeatureCloud.app.engine.app",
    "FeatureCloud.app.api.http_ctrl",
    "FeatureCloud.app.api.http_web",
    "wsgiref.simple_server",
)
"""The environment's libraries the FeatureCloud engine and its apps import; each only if the
environment has it (bottle imports its default server, ``wsgiref``, only when an app starts
it)."""

libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bytes(text):
    return None if text is None else text.encode()


def unshare(flags):
    _check(libc.unshare(flags), "unshare")


def mount(source, target, fstype=None, flags=0, data=None):
    result = libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {target}")


def bind(source, target, writable, recursive=False):
    """A bind whose remount keeps the flags the kernel locked on the source."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    kept = sum(m for bit, m in STATVFS_FLAGS.items() if os.statvfs(target).f_flag & bit)
    flags = (kept & ~MS_RDONLY) | MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY)
    mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


def tmpfs(target, options, flags=MS_NOSUID | MS_NODEV):
    mount("tmpfs", target, "tmpfs", flags, options)


def mounts_under(folder):
    """The top mount points below ``folder`` (the server's sandbox binds the app's
    environment and Python where they are, which may be below ``/tmp``)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(folder + "/"):
                points.append(point)
    points.sort()
    top = []
    for point in points:
        if not any(point.startswith(parent + "/") or point == parent for parent in top):
            top.append(point)
    return top


def private_tmp(size):
    """A ``/tmp`` of the site's own that still holds what the server's sandbox bound below
    it: each such mount is held by a descriptor, the tmpfs laid over, and the mount bound
    back at its place (read-only, as it was)."""
    kept = [(point, os.open(point, os.O_PATH)) for point in mounts_under("/tmp")]
    tmpfs("/tmp", f"size={size},mode=1777")
    for point, fd in kept:
        os.makedirs(point, exist_ok=True)
        bind(f"/proc/self/fd/{fd}", point, writable=False, recursive=True)
        os.close(fd)


def loopback_up():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        import fcntl

        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def drop_privileges(uid):
    """The site's uid (root only; an ordinary user's sites keep theirs), no capability that
    could come back, ``no_new_privs``."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    header = struct.pack("Ii", CAP_VERSION_3, 0)
    _check(libc.capset(header, bytes(24)), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp(program):
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def set_title(title):
    """What ``ps`` shows for this process: written over the command line's own memory (as
    ``setproctitle`` does), cut to its length; a forked site's app shows as the launcher."""
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    text = title.encode()[: end - start - 1]
    ctypes.memmove(start, text + bytes(end - start - len(text)), end - start)


def write_identity(folder, identity):
    """The site's ``/etc`` files (``passwd``, ``group``, ``hosts``, ``hostname``), written in
    ``folder`` (a tmpfs of the child's) and bound read-only over the server's."""
    for name, text in identity.items():
        path = f"{folder}/{name}"
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o444)
        bind(path, f"/etc/{name}", writable=False)


def fresh_proc():
    """A ``/proc`` of the new pid namespace, covered as bubblewrap covers it."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_COVERED:
        if os.path.exists(f"/proc/{name}"):
            bind(f"/proc/{name}", f"/proc/{name}", writable=False)


def report_setup_error(status, exc):
    """Tell fedsim why a child could not take its site's place, and end it."""
    with_trace = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    try:
        status.send(f"error {with_trace}".encode()[:4000])
    finally:
        os._exit(1)


def uncover_proc():
    """bubblewrap covers parts of ``/proc``; a proc mount is only made in a user namespace
    while another one is fully visible, so the server's must be: its covers go."""
    for name in PROC_COVERED:
        libc.umount2(f"/proc/{name}".encode(), MNT_DETACH)


# --- the server -----------------------------------------------------------------------------


def become_server(control, server_uid):
    """As root: stop being root on the host, then make the user namespace fedsim maps the
    run's uids into. As an ordinary user bubblewrap made it already."""
    uncover_proc()
    if server_uid is None:
        return
    os.setgroups([])
    os.setresgid(server_uid, server_uid, server_uid)
    os.setresuid(server_uid, server_uid, server_uid)
    unshare(CLONE_NEWUSER)
    control.send(b"map")
    if control.recv(64) != b"mapped":
        raise SystemExit("fedsim did not map the fork-server's uids")


def preload():
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    import app_launcher  # noqa: F401  (what every child runs)

    gc.collect()
    if hasattr(gc, "freeze"):  # Python 3.7 on
        gc.freeze()  # the children's collector then leaves the shared objects' pages alone


def receive(sock):
    """One datagram and the descriptors that came with it (``socket.recv_fds`` of 3.9)."""
    size = struct.calcsize("i")
    message, ancillary, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(4 * size))
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % size
            fds += struct.unpack(f"{usable // size}i", data[:usable])
    return message, fds


def serve(control, seccomp):
    """Fork a site for each request until fedsim hangs up; returns in the app's process only
    (with what it runs), so that the app runs on the interpreter's top level."""
    while True:
        message, fds = receive(control)
        if not message:
            return None
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            control.close()
            return site_child(request, fds, seccomp)
        for fd in fds:
            os.close(fd)
        os.waitpid(pid, 0)  # the intermediate only sets up and forks the site's pid 1


def site_child(request, fds, seccomp):
    """``fds``: the status socket, the output pipe, the dialer's socket and, if any, the
    site's secrets."""
    status = socket.socket(fileno=fds[0])
    try:
        enter_site(request, fds[3] if len(fds) > 3 else None)
        if os.fork() != 0:
            os._exit(0)
        return site_init(request, status, fds[1], socket.socket(fileno=fds[2]), seccomp)
    except BaseException as exc:
        report_setup_error(status, exc)


def own_user_namespace():
    """A user namespace of the site's own, mapping only the uid and gid it already has.

    The kernel counts a uid's processes against ``RLIMIT_NPROC`` per user namespace. An
    ordinary user's sites all run as that user, so in the server's namespace they would share
    one count: a hundred sites outgrew one site's limit of processes (its threads included),
    and a fork bomb in one site would have left the others none. Root's sites each have a uid
    of their own, so they need no namespace for this."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    maps = {"setgroups": "deny", "uid_map": f"{uid} {uid} 1", "gid_map": f"{gid} {gid} 1"}
    for name, text in maps.items():  # setgroups first: an unprivileged gid map needs it
        with open(f"/proc/self/{name}", "w", encoding="ascii") as handle:
            handle.write(text)


def enter_site(request, env_fd):
    """Namespaces, folders and identity of the site (still privileged in the server's user
    namespace, or in the site's own); the pid namespace takes effect in the next child, the
    site's pid 1."""
    if request["uid"] is None:
        own_user_namespace()
    unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    name = request["hostname"]
    _check(libc.sethostname(name.encode(), len(name.encode())), "sethostname")
    loopback_up()
    site = f"{SITES}/{request['dir']}"
    bind(f"{site}/app", "/app", writable=True)
    bind(f"{site}/input", "/mnt/input", writable=False)
    bind(f"{OUTPUTS}/{request['output']}", "/mnt/output", writable=True)
    for shared in (SITES, OUTPUTS):  # every other site's folders: covered
        tmpfs(shared, "size=4k,mode=000", MS_NOSUID | MS_NODEV | MS_RDONLY)
    private_tmp(request["tmp_bytes"])
    tmpfs(APP_RUN, "size=1m,mode=755")
    uid = request["uid"] if request["uid"] is not None else os.getuid()
    write_identity(APP_RUN, request["identity"])
    if env_fd is not None:
        path = f"{APP_RUN}/site.env"
        with os.fdopen(env_fd, "rb") as source, open(path, "wb") as target:
            target.write(source.read())
        os.chmod(path, 0o400)
        os.chown(path, uid, uid)
    mount(None, APP_RUN, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def site_init(request, status, output_fd, dialer, seccomp):
    """The site's pid 1: a fresh ``/proc``, fedsim's go, then the app as its child, reaped
    with everything else left in the site; meanwhile it makes the agent's connections to the
    app (``dial``); reports the app's exit and ends the site."""
    fresh_proc()
    set_title(f"fedsim-site {request['hostname']}")
    status.send(b"ready")
    if status.recv(16) != b"go":
        os._exit(1)
    drop_privileges(request["uid"])
    # the app shares this uid: it must not write into this process (/proc/1/mem) to run
    # code outside the filter
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    load_seccomp(seccomp)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = os.fork()
    if app == 0:
        status.close()
        return lambda: run_app(request, output_fd, seccomp)
    os.close(output_fd)
    serve_site(app, dialer, status)


def serve_site(app, dialer, status):
    """pid 1's loop, in one thread (a thread's stack and arena cost every site more than a
    megabyte): dial for the agent; reap every child left in the site; report the app's exit
    and end the site."""
    wake, woken = os.pipe()
    os.set_blocking(wake, False)
    os.set_blocking(woken, False)
    signal.set_wakeup_fd(woken)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    watched = [dialer, wake]
    while True:
        reap(app, status)  # first before any wake-up: the app may have ended already
        ready = select.select(watched, [], [])[0]
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)  # what is left wakes the next select at once
        if dialer in ready and not dial(dialer):
            watched.remove(dialer)  # the agent hung up


def reap(app, status):
    """Every child that ended; the app's end is the site's."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == app:
            if os.WIFSIGNALED(wait_status):
                code = 128 + os.WTERMSIG(wait_status)
            else:
                code = os.WEXITSTATUS(wait_status)
            status.send(f"exit {code}".encode())
            os._exit(0)


def dial(dialer):
    """Connect where the agent asks (``ADDRESS PORT``, the address numeric: the agent resolves
    names, so that pid 1 loads no resolver) in the site's network and hand it the socket, or
    ``error ERRNO`` (``agent/app_dialer.py`` is the other end). False once the agent has hung
    up. The site's network holds its loopback only."""
    try:
        message = dialer.recv(64)
    except OSError:
        return False
    if not message:
        return False
    try:
        address, port = message.decode("ascii").split(" ")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as connected:
            connected.settimeout(DIAL_TIMEOUT)
            connected.connect((address, int(port)))
            payload = struct.pack("i", connected.fileno())
            dialer.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, payload)])
    except (OSError, ValueError) as exc:  # a timeout has no errno of its own
        timed_out = isinstance(exc, socket.timeout)
        number = errno.ETIMEDOUT if timed_out else getattr(exc, "errno", None) or errno.EINVAL
        try:
            dialer.send(f"error {number}".encode())
        except OSError:
            return False
    return True


def run_app(request, output_fd, seccomp):
    """As ``python launcher.py`` would start in a sandbox: its output, rlimits, folder and
    environment (the seccomp filter came with the fork)."""
    os.setsid()
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # as any process of its own
    set_title(f"{sys.executable} {APP_RUN}/launcher.py")
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(3, 65536)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name, value in request["rlimits"].items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (value, value))
    os.chdir("/app")
    os.environ.clear()
    os.environ.update(request["env"])
    sys.dont_write_bytecode = True
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:  # seeded once in the server: every site would draw alike
        numpy_random.seed()  # (the random module reseeds itself after a fork)
    sys.argv = [f"{APP_RUN}/launcher.py"]
    runpy.run_module("app_launcher", run_name="__main__")


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    server_uid = int(sys.argv[2]) if sys.argv[2] != "-" else None
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    become_server(control, server_uid)
    with open(SECCOMP, "rb") as handle:
        seccomp = handle.read()
    preload()
    control.send(b"ready")
    return serve(control, seccomp)


if __name__ == "__main__":
    job = main()
    if job is not None:
        job()
