"""A local site is separated like an institution: its files, its processes, its network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedsim.sites.local import fedsim_runtime_dirs
from fedsim.sites.sandbox import Bind, SandboxSpec, build_command

SITE_UID = 2_099_000_321
"""The uid of these sandboxes when the tests run as root (a site never runs as root)."""


@dataclass
class Site:
    spec: SandboxSpec
    input_dir: Path
    output_dir: Path


def make_site(tmp_path: Path, name: str) -> Site:
    for sub in ("input", "output", "app"):
        (tmp_path / name / sub).mkdir(parents=True)
    (tmp_path / name / "input" / "data.csv").write_text(f"secret rows of {name}\n")
    os.chown(tmp_path / name / "output", SITE_UID, SITE_UID)
    spec = SandboxSpec(
        hostname=name,
        binds=[
            Bind(tmp_path / name / "app", "/app"),
            Bind(tmp_path / name / "input", "/mnt/input"),
            Bind(tmp_path / name / "output", "/mnt/output", writable=True),
        ],
        runtime_dirs=fedsim_runtime_dirs(),
        uid=SITE_UID,
    )
    return Site(spec, tmp_path / name / "input", tmp_path / name / "output")


def command(site: Site, argv: list[str]) -> list[str]:
    return build_command(site.spec, argv)


def run_in(site: Site, code: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(command(site, argv), capture_output=True, text=True, timeout=60)


def test_a_site_sees_only_its_own_input(tmp_path: Path) -> None:
    a, b = make_site(tmp_path, "site-a"), make_site(tmp_path, "site-b")
    result = run_in(
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


def test_a_site_cannot_list_other_processes(tmp_path: Path) -> None:
    result = run_in(
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
    tmp_path: Path, host_listener: int
) -> None:
    b = make_site(tmp_path, "site-b")
    # site B listens on a port inside its own network namespace
    server_b = subprocess.Popen(
        command(
            b,
            [
                sys.executable,
                "-c",
                textwrap.dedent("""
        import socket, time
        s = socket.socket(); s.bind(('127.0.0.1', 5000)); s.listen(); print('ready', flush=True)
        time.sleep(60)
    """),
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server_b.stdout is not None and server_b.stdout.readline().strip() == "ready"
        result = run_in(
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
        server_b.kill()
        server_b.wait()
        server_b.stdout.close()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{host_listener} refused")
    assert lines[1].startswith("5000 refused")
    assert lines[2] == "interfaces ['lo']"  # no way out but loopback


def test_a_site_has_its_own_hostname_and_a_read_only_system(tmp_path: Path) -> None:
    a = make_site(tmp_path, "site-a")
    result = run_in(
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSIM_TEST_HOST_TOKEN", "do-not-leak")
    result = run_in(
        make_site(tmp_path, "site-a"),
        """
        import os
        print(os.environ.get('FEDSIM_TEST_HOST_TOKEN'))
    """,
    )
    assert result.stdout.strip() == "None"
