"""A local site is separated like an institution: its files, its processes, its network.

Each test runs on both start-ups of a site's app: a bubblewrap sandbox around a fresh
interpreter, and a child of a fork-server (``sites/forkserver.py``)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from fedsim.sites.forkserver import ForkedApp, ForkServer
from fedsim.sites.local import fedsim_runtime_dirs
from fedsim.sites.local_step import LAUNCHER, venv_base_dirs
from fedsim.sites.sandbox import Bind, SandboxSpec, build_command, identity_files, sandbox_env
from fedsim.sites.seccomp import write_filter

SITE_UID = 2_099_000_321
"""The uid of these sandboxes when the tests run as root (a site never runs as root)."""
UID_BLOCK = (2_099_000_000, 4096, 2_099_004_095)
"""The block a fork-server maps as root: (first, count, its own uid)."""


@dataclass
class Site:
    name: str
    spec: SandboxSpec
    input_dir: Path
    output_dir: Path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Started(Protocol):
    def readline(self) -> str: ...

    def stop(self) -> None: ...


def make_site(tmp_path: Path, name: str) -> Site:
    """Folders as a fork-server expects them: ``sites/<name>/step-1/{input,output,app}``."""
    step = tmp_path / "sites" / name / "step-1"
    for sub in ("input", "output", "app"):
        (step / sub).mkdir(parents=True)
    (step / "input" / "data.csv").write_text(f"secret rows of {name}\n")
    os.chown(step / "output", SITE_UID, SITE_UID)
    spec = SandboxSpec(
        hostname=name,
        binds=[
            Bind(step / "app", "/app"),
            Bind(step / "input", "/mnt/input"),
            Bind(step / "output", "/mnt/output", writable=True),
        ],
        runtime_dirs=fedsim_runtime_dirs(),
        uid=SITE_UID,
    )
    return Site(name, spec, step / "input", step / "output")


class ExecSites:
    """Each run a fresh interpreter in the site's bubblewrap sandbox."""

    def run(self, site: Site, code: str) -> Result:
        argv = [sys.executable, "-c", textwrap.dedent(code)]
        done = subprocess.run(
            build_command(site.spec, argv), capture_output=True, text=True, timeout=60
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def start(self, site: Site, code: str) -> Started:
        argv = [sys.executable, "-c", textwrap.dedent(code)]
        process = subprocess.Popen(
            build_command(site.spec, argv), stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        stdout = process.stdout

        class Running:
            def readline(self) -> str:
                return stdout.readline()

            def stop(self) -> None:
                process.kill()
                process.wait()
                stdout.close()

        return Running()


class ForkSites:
    """Each run the site's app forked by a fork-server of fedsim's own environment (the
    code is the app's main.py): stdout and stderr come as one stream."""

    def __init__(self, tmp_path: Path) -> None:
        env = Path(sys.prefix)
        (tmp_path / "sites").mkdir()
        self.server = ForkServer(
            env,
            [*fedsim_runtime_dirs(), *venv_base_dirs(env)],
            tmp_path / "sites",
            tmp_path / "sites",
            write_filter(tmp_path / "seccomp.bpf"),
            LAUNCHER,
            UID_BLOCK if os.geteuid() == 0 else None,
        )

    def _spawn(self, site: Site, code: str) -> tuple[ForkedApp, queue.Queue[str]]:
        (site.input_dir.parent / "app" / "main.py").write_text(textwrap.dedent(code))
        uid = SITE_UID if os.geteuid() == 0 else None
        request = {
            "hostname": site.name,
            "dir": f"{site.name}/step-1",
            "output": f"{site.name}/step-1/output",
            "uid": uid,
            "tmp_bytes": 64 * 1024 * 1024,
            "identity": {
                Path(dest).name: text
                for dest, text in identity_files(site.name, uid or os.getuid()).items()
            },
            "env": sandbox_env({}),
            "rlimits": {},
        }
        lines: queue.Queue[str] = queue.Queue()
        app, dialer = self.server.spawn_app(
            site.name, request, None, cgroup=None, on_line=lines.put, thread_name="test-app"
        )
        dialer.close()  # no agent here
        return app, lines

    def run(self, site: Site, code: str) -> Result:
        app, lines = self._spawn(site, code)
        deadline = time.monotonic() + 60
        while app.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        code_ = app.poll()
        app.kill()
        text = [lines.get().split("\t", 2)[2] for _ in range(lines.qsize())]
        return Result(-1 if code_ is None else code_, "".join(f"{t}\n" for t in text), "")

    def start(self, site: Site, code: str) -> Started:
        app, lines = self._spawn(site, code)

        class Running:
            def readline(self) -> str:
                return lines.get(timeout=60).split("\t", 2)[2]

            def stop(self) -> None:
                app.kill()

        return Running()


@pytest.fixture(params=["exec", "fork"])
def sites(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExecSites | ForkSites]:
    if request.param == "exec":
        yield ExecSites()
        return
    forked = ForkSites(tmp_path)
    yield forked
    forked.server.close()


def test_a_site_sees_only_its_own_input(tmp_path: Path, sites: ExecSites | ForkSites) -> None:
    a, b = make_site(tmp_path, "site-a"), make_site(tmp_path, "site-b")
    result = sites.run(
        a,
        f"""
        import os
        print(open('/mnt/input/data.csv').read(), end='')
        for path in ({str(b.input_dir / "data.csv")!r}, {str(tmp_path)!r}):
            print(path, os.path.exists(path))
    """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "secret rows of site-a"
    assert lines[1:] == [f"{b.input_dir / 'data.csv'} False", f"{tmp_path} False"]


def test_a_site_cannot_list_other_processes(tmp_path: Path, sites: ExecSites | ForkSites) -> None:
    result = sites.run(
        make_site(tmp_path, "site-a"),
        """
        import os
        pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        print(pids)
    """,
    )
    assert result.returncode == 0, result.stderr
    pids = eval(result.stdout)  # a list of ints printed by the sandboxed code
    assert len(pids) <= 3, f"the site sees {len(pids)} processes"


def test_a_site_reaches_no_tcp_port_of_the_host_or_another_site(
    tmp_path: Path, host_listener: int, sites: ExecSites | ForkSites
) -> None:
    b = make_site(tmp_path, "site-b")
    # site B listens on a port inside its own network namespace
    server_b = sites.start(
        b,
        """
        import socket, time
        s = socket.socket(); s.bind(('127.0.0.1', 5000)); s.listen(); print('ready', flush=True)
        time.sleep(60)
        """,
    )
    try:
        assert server_b.readline().strip() == "ready"
        result = sites.run(
            make_site(tmp_path, "site-a"),
            f"""
            import socket
            for port in ({host_listener}, 5000):
                try:
                    socket.create_connection(('127.0.0.1', port), timeout=2).close()
                    print(port, 'connected')
                except OSError as exc:
                    print(port, 'refused', type(exc).__name__)
            lines = open('/proc/net/dev').read().splitlines()[2:]
            print('interfaces', sorted(line.split(':')[0].strip() for line in lines))
        """,
        )
    finally:
        server_b.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{host_listener} refused")
    assert lines[1].startswith("5000 refused")
    assert lines[2] == "interfaces ['lo']"  # no way out but loopback


def test_a_site_has_its_own_hostname_and_a_read_only_system(
    tmp_path: Path, sites: ExecSites | ForkSites
) -> None:
    a = make_site(tmp_path, "site-a")
    result = sites.run(
        a,
        """
        import socket
        print(socket.gethostname())
        open('/mnt/output/result.txt', 'w').write('ok')
        for path in ('/usr/fedsim-test', '/mnt/input/new', '/app/new'):
            try:
                open(path, 'w')
                print(path, 'writable')
            except OSError:
                print(path, 'read-only')
    """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "site-a",
        "/usr/fedsim-test read-only",
        "/mnt/input/new read-only",
        "/app/new read-only",
    ]
    assert (a.output_dir / "result.txt").read_text() == "ok"


def test_a_site_inherits_no_host_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sites: ExecSites | ForkSites
) -> None:
    monkeypatch.setenv("FEDSIM_TEST_HOST_TOKEN", "do-not-leak")
    result = sites.run(
        make_site(tmp_path, "site-a"),
        """
        import os
        print(os.environ.get('FEDSIM_TEST_HOST_TOKEN'))
    """,
    )
    assert result.stdout.strip() == "None"


def test_sites_draw_their_own_random_numbers(tmp_path: Path, sites: ExecSites | ForkSites) -> None:
    """Forked from one server, sites would share its generators' states unless reseeded."""
    code = """
        import random
        import numpy
        print(random.random(), numpy.random.random())
    """
    draws = [sites.run(make_site(tmp_path, name), code) for name in ("site-a", "site-b")]
    assert all(d.returncode == 0 for d in draws), [d.stderr for d in draws]
    a, b = (d.stdout.split() for d in draws)
    assert a[0] != b[0] and a[1] != b[1], f"two sites drew alike: {a} {b}"
