"""The agent fork-server: one per run, it imports the agent once and forks every site's agent
from there, so that an agent costs a fork instead of a fresh interpreter with httpx's imports
(see ``docs/forked-agents.md``).

Runs under fedsim's interpreter in a bubblewrap sandbox of its own (``agent_forkserver.py``):
the system and fedsim's runtime read-only, the folder of the relays' sockets, no network, no
token, no site's files. As root it stays root (in the sandbox, with bubblewrap's
capabilities) to give each agent its site's agent uid; as an ordinary user it keeps
bubblewrap's user namespace and its capabilities there, and its agents keep the user's uid.
It takes requests only on the socket pair fedsim made at its start, starts no thread and
holds no descriptor but that socket, so a fork inherits nothing of another site.

A forked child takes its place before it learns anything of its site's secrets: new mount,
pid, uts, ipc and network namespaces (a network of its own, empty: it reaches its app only
through its site's dialer, ``agent/app_dialer.py``); the relay's socket bound where the launch
description names it, the site's ``/etc`` identity, a private ``/tmp``; as the new pid
namespace's pid 1, a fresh ``/proc``, the agent's uid (as root), no capabilities,
``no_new_privs``, not dumpable, the seccomp filter. Only then does it say ``ready`` on its
status socket, and fedsim answers with the token. It reports ``exit N`` there when the agent
ends, as a forked app's pid 1 does (``forkserver_main.py``, whose protocol and helpers these
are).
"""

from __future__ import annotations

import gc
import io
import json
import os
import signal
import socket
import sys
import traceback

from fedsim.sites.forkserver_main import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_SET_DUMPABLE,
    PR_SET_PDEATHSIG,
    _check,
    bind,
    drop_privileges,
    fresh_proc,
    libc,
    load_seccomp,
    mount,
    private_tmp,
    receive,
    report_setup_error,
    set_title,
    tmpfs,
    uncover_proc,
    unshare,
    write_identity,
)

HERE = "/run/fedsim-agents"
SECCOMP = HERE + "/seccomp.bpf"
AGENT_RUN = "/run/fedsim-agent"
SYS_MOVE_MOUNT = 429  # the same number on every architecture (Linux 5.2 on)
AT_FDCWD = -100
F_EMPTY_PATH = 4  # MOVE_MOUNT_F_EMPTY_PATH
TMP_SIZE = 16 * 1024 * 1024
"""The agent writes nothing to ``/tmp``; a small one is still its own."""


def preload() -> None:
    """What every agent runs, imported once; httpx's command-line client left out as
    ``python -m fedsim.agent`` does. httpx imports its transport (httpcore, h11, anyio: 145
    modules) and OpenSSL sets itself up only when a first client is made: one made and closed
    here saves each agent about 10 MiB of its own."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import httpx

    import fedsim.agent.main  # noqa: F401
    from fedsim.relay.client import plain_http_context

    httpx.Client(base_url="http://localhost", verify=plain_http_context()).close()
    "localhost".encode("idna")  # each request's host name goes through the idna codec
    gc.collect()
    gc.freeze()  # the children's collector then leaves the shared objects' pages alone


def serve(control: socket.socket, seccomp: bytes) -> None:
    """Fork an agent for each request until fedsim hangs up."""
    while True:
        message, fds = receive(control)
        if not message:
            return
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            control.close()
            agent_child(request, fds, seccomp)  # never returns
        for fd in fds:
            os.close(fd)
        os.waitpid(pid, 0)  # the intermediate only sets up and forks the agent (its pid 1)


def agent_child(request: dict, fds: list[int], seccomp: bytes) -> None:
    """``fds``: the status socket, the output pipe, the agent's end of its site's dialer."""
    status = socket.socket(fileno=fds[0])
    try:
        enter_site(request)
        if os.fork() != 0:
            os._exit(0)
        code = agent_init(request, status, fds[1], fds[2], seccomp)
    except BaseException as exc:
        report_setup_error(status, exc)
    try:
        sys.stdout.flush()
        status.send(f"exit {code}".encode())
    finally:
        os._exit(code)


def enter_site(request: dict) -> None:
    """Namespaces (a network of its own among them), folders and identity of the agent's own."""
    unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    name = request["hostname"]
    _check(libc.sethostname(name.encode(), len(name.encode())), "sethostname")
    bind(request["relay"], request["relay_socket"], writable=False)  # connecting writes nothing
    private_tmp(TMP_SIZE)
    tmpfs(AGENT_RUN, "size=1m,mode=755")
    write_identity(AGENT_RUN, request["identity"])
    mount(None, AGENT_RUN, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def agent_init(
    request: dict, status: socket.socket, output_fd: int, dialer: int, seccomp: bytes
) -> int:
    """The agent's pid namespace's pid 1, which is the agent: a fresh ``/proc``, its uid and
    filter, ``ready``; the token in answer; then the agent's loop, whose exit code it returns."""
    fresh_proc()
    set_title(f"{sys.executable} -m fedsim.agent {request['hostname']}")
    drop_privileges(request["uid"])
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    load_seccomp(seccomp)
    status.send(b"ready")
    token = status.recv(4096).decode()
    if not token:
        os._exit(1)  # fedsim gave up on this site
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    for fd in (output_fd, null):
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # fedsim stops a site, not the terminal
    os.chdir("/")
    os.environ.clear()
    os.environ.update(request["env"])
    from fedsim.agent.app_dialer import AppDialer
    from fedsim.agent.main import run_agent
    from fedsim.logs import configure_agent_stdout

    configure_agent_stdout()
    try:
        return run_agent(request["launch"], token, AppDialer(dialer))
    except Exception:  # as an uncaught one ends ``python -m fedsim.agent``: in the site's log
        traceback.print_exc()
        return 1


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uncover_proc()  # as an ordinary user, each child's /proc needs a fully visible one
    with open(SECCOMP, "rb") as handle:
        seccomp = handle.read()
    preload()
    control.send(b"ready")
    serve(control, seccomp)


if __name__ == "__main__":
    main()
