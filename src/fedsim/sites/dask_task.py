"""The far end of a Dask site: one long-running task on a worker that holds one site.

The task starts the site host (``remote_host.py``, the same code an SSH site runs at its
host) as a child of the worker, with the worker's own interpreter, and joins it to the
orchestrator through two ``distributed.Queue``s: requests come in, replies, lines and the
agent's exit go out (in batches: every put is a trip through the scheduler). Only this
site's own files travel, inside the requests and replies (``tarball.py``): the app, the
step's inputs, the env file (written 0600 here), the outputs. Nothing is ever handed to
another task, so no site's data moves between workers. The site's secrets (its relay token
and env file) arrive sealed to a key pair the task made (``sealed.py``): the scheduler
passes them on without being able to read them.

The relay is reached over TCP with TLS: each step gets a Unix socket in the site's folder
that the agent's sandbox binds (``relay_proxy.py``). When the orchestrator is gone, the
scheduler releases the task it submitted (its client left) and the worker marks it
cancelled; the task looks at that every ``POLL_INTERVAL`` (at the worker, no message), stops
the site and ends: nothing of a run stays on a worker. No pings: at fifty sites, a ping per
site through the scheduler was itself the load that made the pings late.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedsim.appenv import COMPLETE_MARKER, cache_root
from fedsim.cachelock import cache_lock
from fedsim.logs import FIELD_SEPARATOR
from fedsim.sites.install import INSTALL_TIMEOUT, install_script
from fedsim.sites.relay_proxy import RelayProxy
from fedsim.sites.sealed import SealKey
from fedsim.sites.tarball import pack, unpack

POLL_INTERVAL = 2.0
"""Seconds between looks at whether the orchestrator let go of the task."""
GONE = ("cancelled", "released", "forgotten")
"""The worker's states of a task nobody wants any more."""
RELEASED = "released"
"""The request the task's own watcher puts when the scheduler let go of the task."""
BATCH_INTERVAL = 0.05


class _Outbox:
    """Messages to the orchestrator, sent in batches by a thread of their own."""

    def __init__(self, events: Any) -> None:
        self._events = events
        self._pending: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._send, name="outbox", daemon=True)
        self._thread.start()

    def put(self, message: dict[str, Any]) -> None:
        self._pending.put(message)

    def _send(self) -> None:
        done = False
        while not done:
            batch = [self._pending.get()]
            time.sleep(BATCH_INTERVAL)
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._pending.get_nowait())
            done = batch[-1] is None
            messages = [m for m in batch if m is not None]
            if messages:
                self._events.put(messages)

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=30)


def provision_env(key: str, python: str, wheels: bytes | None) -> dict[str, Any]:
    """At a worker: the environment of wheelhouse ``key`` in this worker's cache, installed
    from ``wheels`` (a packed wheelhouse) with the same script as at SSH sites, where it stays
    for later runs. Without ``wheels`` it only says whether the environment is there
    (``env`` None when not): the wheels travel only to a worker that lacks it."""
    workdir = cache_root() / "dask-worker"
    env = workdir / "envs" / key
    if (env / COMPLETE_MARKER).is_file():
        return {"env": str(env), "installed": False}
    if wheels is None:
        return {"env": None}
    folder = workdir / "wheels" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(folder.parent / f"{key}.lock"):  # workers on one machine share the cache
        if not (folder / COMPLETE_MARKER).is_file():
            partial = workdir / "wheels" / f"{key}.partial-{os.getpid()}-{threading.get_ident()}"
            unpack(wheels, partial)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
    done = subprocess.run(
        ["sh", "-c", install_script(str(workdir), key, python)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"installing {key} failed: {tail}"}
    return {"env": str(env), "installed": done.stdout.strip().endswith("installed")}


class SiteTask:
    """Between the queues and the site host (see the module docstring)."""

    def __init__(self, events: Any) -> None:
        self.outbox = _Outbox(events)
        self._key = SealKey()
        self.folder = Path(tempfile.mkdtemp(prefix="fedsim-dask-"))  # short: socket paths
        self._host = subprocess.Popen(
            [sys.executable, "-m", "fedsim.sites.remote_host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.folder,
        )
        self._after: dict[Any, Any] = {}
        self._proxy: RelayProxy | None = None
        self._step = 0
        self._apps = 0
        threading.Thread(target=self._read_answers, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read_answers(self) -> None:
        assert self._host.stdout is not None
        for text in self._host.stdout:
            message = json.loads(text)
            finish = self._after.pop(message.get("reply"), None)
            if finish is not None and "error" not in message:
                finish(message)
            self.outbox.put(message)

    def _read_errors(self) -> None:
        """What the site host prints outside the protocol (a crash's traceback)."""
        assert self._host.stderr is not None
        for text in self._host.stderr:
            self._warn(text.rstrip())

    def handle(self, request: dict[str, Any]) -> None:
        """Files out of the request into the site's folder, their paths into it, and on
        to the site host; a reply that brings files back is completed in ``_after``. The
        worker's environments (``provision``) and its clock are this task's own business."""
        op = request["op"]
        if op == "clock":
            self.outbox.put({"reply": request["id"], "time": time.time()})
            return
        if op == "provision":
            key, python = str(request["key"]), str(request["python"])
            answer = provision_env(key, python, request.get("wheels"))
            self.outbox.put({"reply": request["id"], **answer})
            return
        if op == "open":
            request["dir"] = str(self.folder / "site")
            request["run_folder"] = str(self.folder)
            self._after[request["id"]] = lambda reply: reply.update(seal_key=self._key.public)
        elif op == "prepare":
            self._apps += 1
            app_dir = self.folder / "apps" / str(self._apps)
            unpack(request.pop("app"), app_dir)
            request["app_dir"] = str(app_dir)
            self._after[request["id"]] = lambda reply: reply.update(app_dir=str(app_dir))
        elif op == "inputs":
            self._step += 1
            inputs = self.folder / "inputs" / f"step-{self._step}"
            unpack(request.pop("inputs_tar"), inputs)
            request["inputs"] = [str(inputs)]
        elif op == "spawn":
            self._spawn(request)
        elif op == "collect":
            output = self._output()
            request["output_dir"] = str(output)
            self._after[request["id"]] = lambda reply: reply.update(output=pack(output))
        self._send(request)

    def _spawn(self, request: dict[str, Any]) -> None:
        self._close_proxy()
        socket_path = self.folder / f"relay-{self._step}.sock"
        host, port = request.pop("relay")
        self._proxy = RelayProxy(socket_path, host, int(port), self._warn)
        request["relay_socket"] = str(socket_path)
        request["output_dir"] = str(self._output())
        request["token"] = self._key.open(request.pop("token_sealed")).decode()
        sealed_env = request.pop("env_sealed", None)
        if sealed_env is not None:
            env_file = self.folder / "site.env"
            env_file.touch(mode=0o600)
            env_file.write_bytes(self._key.open(sealed_env))
            request["env_file"] = str(env_file)

    def _warn(self, message: str) -> None:
        line = FIELD_SEPARATOR.join(("site", "WARNING", message))
        self.outbox.put({"line": line, "t": time.time()})

    def _output(self) -> Path:
        return self.folder / "outputs" / f"step-{self._step}"

    def _send(self, request: dict[str, Any]) -> None:
        assert self._host.stdin is not None
        self._host.stdin.write(json.dumps(request) + "\n")
        self._host.stdin.flush()

    def _close_proxy(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.close()

    def close(self) -> None:
        """The site host stops the site when its input closes; then the folder goes."""
        with contextlib.suppress(OSError):
            if self._host.stdin is not None:
                self._host.stdin.close()
        try:
            self._host.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._host.kill()
            self._host.wait()
        self._close_proxy()
        self.outbox.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _released(worker: Any, key: Any) -> bool:
    """Whether the scheduler let go of this task (its client, the orchestrator, is gone)."""
    task = worker.state.tasks.get(key)
    return task is None or task.state in GONE


def run_site(requests: Any, events: Any) -> str:
    """The task: serves one site until the orchestrator says ``close`` or lets go of it.
    Seceded from the worker's thread pool, so a worker holds as many sites as it is given
    (``sites_per_worker``) whatever its number of threads. Returns why it ended. Requests
    are awaited without a timeout (a get that times out costs the scheduler a logged
    traceback); a thread looks at the task's state every ``POLL_INTERVAL``, at the worker,
    and wakes the loop with ``RELEASED`` when the scheduler let go of it."""
    from distributed import get_worker, secede

    worker = get_worker()
    key = worker.get_current_task()
    secede()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_INTERVAL):
            if _released(worker, key):
                with contextlib.suppress(Exception):  # the scheduler itself may be gone
                    requests.put({"op": RELEASED})
                return

    task = SiteTask(events)
    threading.Thread(target=watch, name="released", daemon=True).start()
    ended = "closed"
    try:
        while True:
            request = requests.get()
            if request.get("op") == RELEASED:
                ended = "the orchestrator let go of the site's task (it stopped or is gone)"
                break
            task.handle(request)
            if request.get("op") == "close":
                break
    finally:
        done.set()
        task.close()
    return ended
