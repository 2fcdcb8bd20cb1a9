"""A real Dask cluster whose workers are other machines on the network, for tests and benchmarks.

A ``dask scheduler`` on the hub of an ``SshNetwork`` (``sshd_hosts.py``) and ``dask worker``
processes, each in a plain host namespace of its own: routed to the hub's addresses (the
scheduler, the relay, fedsim) and to nothing else, so workers cannot reach each other or
this machine's own network. fedsim runs from the hub (``Cluster.fedsim``); the workers share
this machine's files (fedsim and the app's environment are at the same paths there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.sshd_hosts import SshNetwork, ssh_network

DASK = [sys.executable, "-m", "dask"]
RELAY_PORT = 8443
"""The relay's port on the hub: the hub is the test's own namespace, so any port is free."""


@dataclass
class Cluster:
    address: str
    workers: dict[str, subprocess.Popen[bytes]]
    """Worker address -> its process."""
    scheduler: subprocess.Popen[bytes]
    network: SshNetwork
    relay_address: str
    """On the hub, where every worker's namespace is routed (and nowhere else)."""
    temp: dict[str, Path]
    """Worker address -> its temporary folder (``TMPDIR``), where its sites' folders are."""

    def table(self) -> dict[str, Any]:
        """The config's ``[dask]`` table for this cluster."""
        return {"scheduler": self.address, "relay_address": self.relay_address}

    def fedsim(self, *args: str) -> list[str]:
        """fedsim's argv, run from the hub: the only network that reaches the cluster."""
        return self.network.in_hub([sys.executable, "-m", "fedsim", *args])

    def ask(self, code: str) -> Any:
        """What ``code`` (a function of a connected ``client``, as text) returns, as JSON,
        asked from the hub."""
        program = (
            "import json, sys\nfrom distributed import Client\n"
            f"with Client({self.address!r}, timeout='20s') as client:\n"
            f"    json.dump(({code})(client), sys.stdout)\n"
        )
        argv = self.network.in_hub([sys.executable, "-c", program])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"asking the scheduler failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)


RECORDER = """
import json

def dask_setup(scheduler):
    put = scheduler.handlers["queue_put"]

    async def recorded(name=None, key=None, data=None, **options):
        with open({path!r}, "a") as out:
            out.write(json.dumps({{"queue": name, "data": repr(data)}}) + "\\n")
        return await put(name=name, key=key, data=data, **options)

    scheduler.handlers["queue_put"] = recorded
"""
"""A scheduler preload: every value put on a queue, as the scheduler received it, one JSON
line each (the queue's name and the value's repr: bytes show as they are)."""


def _start(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def _scheduler_address(scheduler_file: Path, deadline: float) -> str:
    """The address the scheduler wrote, once its file is whole: the file exists before its
    text is in it (on a loaded machine a read found it empty)."""
    while True:
        try:
            return str(json.loads(scheduler_file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@contextlib.contextmanager
def dask_cluster(
    folder: Path,
    n_workers: int,
    record_queues: Path | None = None,
    worker_cache: Path | None = None,
) -> Iterator[Cluster]:
    """The scheduler and ``n_workers`` workers (one thread each), logs and local folders
    under ``folder``; all stopped and the namespaces gone afterwards. With ``record_queues``,
    the scheduler writes there everything put on its queues (``RECORDER``); with
    ``worker_cache``, the workers keep fedsim's cache there (``FEDSIM_CACHE_DIR``), empty
    at first, instead of sharing this machine's."""
    with ssh_network() as network:
        hosts = network.add_plain_hosts(n_workers)
        hub = hosts[0].hub_address
        scheduler_file = folder / "scheduler.json"
        options = ["--host", hub, "--port", "0", "--no-dashboard"]
        if record_queues is not None:
            preload = folder / "record_queues.py"
            preload.write_text(RECORDER.format(path=str(record_queues)))
            options += ["--preload", str(preload)]
        scheduler = _start(
            network.in_hub([*DASK, "scheduler", *options, "--scheduler-file", str(scheduler_file)]),
            folder / "scheduler.log",
        )
        processes = [scheduler]
        temps: list[Path] = []
        try:
            address = _scheduler_address(scheduler_file, deadline=time.monotonic() + 30)
            by_host = {}
            for i, host in enumerate(hosts):
                options = ["--host", host.address, "--no-nanny", "--nthreads", "1"]
                options += ["--no-dashboard", "--local-directory", str(folder / f"w{i}")]
                argv = host.run_in([*DASK, "worker", address, *options])
                # short, for the sockets in it; the fixture's own, to see what sites leave
                temp = Path(tempfile.mkdtemp(prefix=f"fedsim-test-w{i}-"))
                temps.append(temp)
                env = {**os.environ, "TMPDIR": str(temp)}
                if worker_cache is not None:
                    env["FEDSIM_CACHE_DIR"] = str(worker_cache)
                process = _start(argv, folder / f"worker-{i}.log", env)
                processes.append(process)
                by_host[host.address] = (process, temp)
            cluster = Cluster(address, {}, scheduler, network, f"{hub}:{RELAY_PORT}", {})
            addresses = cluster.ask(
                f"lambda c: c.wait_for_workers({n_workers}, timeout=60) or list(c.nthreads())"
            )
            for worker in addresses:
                process, temp = by_host[worker.split("//")[1].rsplit(":", 1)[0]]
                cluster.workers[worker], cluster.temp[worker] = process, temp
            yield cluster
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
            for temp in temps:
                shutil.rmtree(temp, ignore_errors=True)
