"""Stand-ins of featurecloud.ai's API and of a participant's FeatureCloud controller.

featurecloud.ai, its controller images and Docker cannot be reached from here, so fedsim's
client is tested against these: real HTTP servers (Starlette under uvicorn, on loopback
only) that follow shared/FEATURECLOUD_AI_API.md, call for call. They are stand-ins, not the
real thing: they check what the doc says (bearer tokens, roles, the upload headers, the
order of statuses) and let a test misbehave on purpose (expire tokens, answer 429, never
finish, drop a field). One ``StandInWorld`` holds the website's state; each participant's
controller stand-in reports to it, as the real controller reports to the website.

A controller stand-in is either served in-process (``controller_app``) or started at a site
by the ``featurecloud`` CLI stand-in (tests/fc_standin_bin/featurecloud, with a ``docker``
stand-in beside it): that one is a small process on the site's own localhost:8000 which hands
each call to the website stand-in under ``/standin-controller/<siteKey>/``, where the same
``controller_app`` answers for that site's user.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import io
import os
import secrets
import signal
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

ORIGIN = "https://featurecloud.ai"


@dataclass
class StandInProject:
    id: int
    owner: str
    name: str
    description: str
    status: str = "init"
    workflow: list[dict[str, Any]] = field(default_factory=list)
    members: set[str] = field(default_factory=set)
    uploads: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    finalized: set[str] = field(default_factory=set)
    running_polls: int = 0
    runs: int = 0


@dataclass
class StandInWorld:
    """The website's state, and the knobs a test turns."""

    users: dict[str, str]
    apps: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": 7, "slug": "mean"}, {"id": 9, "slug": "pca"}]
    )
    finish_after: int | None = 2
    """Status polls by the coordinator while running before the project is finished; None:
    never finishes."""
    finish_as: str = "finished"
    """The status a run ends with ("error" or "failed" to play a failing app)."""
    throttle: int = 0
    """The next this many requests to the website are answered 429."""
    drop: dict[str, str] = field(default_factory=dict)
    """Path -> a field left out of that path's answers."""
    access: dict[str, str] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    libraries: dict[str, set[int]] = field(default_factory=dict)
    projects: dict[int, StandInProject] = field(default_factory=dict)
    invites: dict[str, int] = field(default_factory=dict)
    log: list[tuple[float, str, str, str]] = field(default_factory=list)
    """(time, method, path, User-Agent) of every request to the website."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: Callable[[StandInProject, str], dict[str, bytes]] | None = None
    """What the run hands each user as results (project, user -> files); default: a
    ``result.txt`` naming that user's own uploads."""

    def expire_access_tokens(self) -> None:
        self.access.clear()

    def calls(self, method: str, path: str) -> int:
        return sum(1 for _, m, p, _ in self.log if (m, p) == (method, path))

    def finalize(self, user: str, project_id: int) -> None:
        """A controller reports that ``user`` finished uploading; once every member has,
        the run starts (what the real website does with its controllers)."""
        project = self.projects[project_id]
        project.finalized.add(user)
        if project.finalized >= project.members:
            project.status = "running"
            project.runs += 1


def _answer(world: StandInWorld, request: Request, body: Any, status: int = 200) -> Response:
    missing = world.drop.get(request.url.path)
    if missing and isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != missing}
    elif missing and isinstance(body, list):
        body = [{k: v for k, v in item.items() if k != missing} for item in body]
    return JSONResponse(body, status_code=status)


def website_app(world: StandInWorld) -> Starlette:
    """The website's API (prefix as on featurecloud.ai)."""

    def user_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return (
            world.access.get(header.removeprefix("Bearer "))
            if header.startswith("Bearer ")
            else None
        )

    def new_access(user: str) -> str:
        token = secrets.token_hex(8)
        world.access[token] = user
        return token

    async def handle(request: Request) -> Response:
        with world.lock:
            world.log.append(
                (
                    time.monotonic(),
                    request.method,
                    request.url.path,
                    request.headers.get("user-agent", ""),
                )
            )
            if world.throttle > 0:
                world.throttle -= 1
                return JSONResponse({"detail": "Request was throttled."}, status_code=429)
        body = await request.json() if await request.body() else {}
        path = request.url.path
        with world.lock:
            if path == "/api/auth/login/":
                if world.users.get(body.get("username")) != body.get("password"):
                    return JSONResponse({"detail": "No active account"}, status_code=401)
                refresh = secrets.token_hex(8)
                world.refresh[refresh] = body["username"]
                return _answer(
                    world, request, {"access": new_access(body["username"]), "refresh": refresh}
                )
            if path == "/api/auth/token/refresh/":
                user = world.refresh.get(body.get("refresh"))
                if user is None:
                    return JSONResponse({"detail": "Token is invalid or expired"}, status_code=401)
                return _answer(world, request, {"access": new_access(user)})
            user = user_of(request)
            if user is None:
                return JSONResponse({"detail": "Given token not valid"}, status_code=401)
            return _authenticated(world, request, user, body)

    routes = [
        Route(path, handle, methods=["GET", "POST", "PUT", "DELETE"])
        for path in (
            "/api/auth/login/",
            "/api/auth/token/refresh/",
            "/api/user/info/",
            "/api/site/",
            "/api/apps/",
            "/api/apps/purchase/",
            "/api/apps/{app_id:int}/purchase/",
            "/api/projects/",
            "/api/projects/{project_id:int}/",
            "/api/project-tokens/",
            "/api/project-tokens/{project_id:int}/",
        )
    ]
    mounts = [
        Mount(f"/standin-controller/{site_key(user)}", app=controller_app(world, user))
        for user in world.users
    ]
    return Starlette(routes=[*routes, *mounts])


def site_key(user: str) -> str:
    return f"key-{user}"


def _authenticated(
    world: StandInWorld, request: Request, user: str, body: dict[str, Any]
) -> Response:
    path, method = request.url.path, request.method
    params = request.path_params
    library = world.libraries.setdefault(user, set())
    if path == "/api/user/info/":
        return _answer(world, request, {"username": user})
    if path == "/api/site/":
        # standinWebsite: where this site reached the website, for the controller stand-in
        website = str(request.base_url)
        return _answer(
            world, request, {"siteName": user, "siteKey": site_key(user), "standinWebsite": website}
        )
    if path == "/api/apps/":
        return _answer(world, request, world.apps)
    if path == "/api/apps/purchase/":
        return _answer(world, request, [a for a in world.apps if a["id"] in library])
    if "app_id" in params:
        if method == "POST":
            library.add(params["app_id"])
        else:
            library.discard(params["app_id"])
        return Response(status_code=204)
    if path == "/api/projects/" and method == "POST":
        pid = len(world.projects) + 1
        world.projects[pid] = StandInProject(
            pid, user, body["name"], body["description"], members={user}
        )
        return _answer(world, request, {"id": pid, "name": body["name"], "status": "init"}, 201)
    if path == "/api/project-tokens/" and body.get("cmd") == "join":
        pid = world.invites.pop(body.get("token"), None)
        if pid is None:
            return JSONResponse({"detail": "unknown token"}, status_code=400)
        world.projects[pid].members.add(user)
        return _answer(world, request, {"detail": "joined"})
    project = world.projects.get(params.get("project_id", -1))
    if project is None or user not in project.members:
        return JSONResponse({"detail": "Not found."}, status_code=404)
    if path.startswith("/api/project-tokens/"):
        if user != project.owner:
            return JSONResponse({"detail": "not the coordinator"}, status_code=400)
        token = secrets.token_hex(6)
        world.invites[token] = project.id
        return _answer(world, request, {"token": token, "project": project.id}, 201)
    if method == "GET":
        return _answer(world, request, _project_state(world, project, user))
    return _change_project(world, request, project, user, body)


def _project_state(world: StandInWorld, project: StandInProject, user: str) -> dict[str, Any]:
    if project.status == "running" and user == project.owner:
        project.running_polls += 1
        if world.finish_after is not None and project.running_polls > world.finish_after:
            project.status = world.finish_as
    return {
        "id": project.id,
        "name": project.name,
        "status": project.status,
        "role": "coordinator" if user == project.owner else "participant",
        "workflow": project.workflow,
    }


def _change_project(
    world: StandInWorld, request: Request, project: StandInProject, user: str, body: dict[str, Any]
) -> Response:
    if user != project.owner:
        return JSONResponse({"detail": "not the coordinator"}, status_code=400)
    wanted = body.get("status")
    allowed = {
        "ready": {"init", "ready", "finished", "error", "failed", "stopped"},
        "prepare": {"ready"},
        "shutdown": {"prepare", "running"},
    }
    if wanted not in allowed or project.status not in allowed[wanted]:
        return JSONResponse(
            {"detail": f"cannot go from {project.status} to {wanted}"}, status_code=400
        )
    if "workflow" in body:
        orders = [step.get("order") for step in body["workflow"]]
        ids = [step.get("federatedApp", {}).get("id") for step in body["workflow"]]
        if orders != list(range(len(orders))) or not set(ids) <= world.libraries.get(user, set()):
            return JSONResponse({"detail": "bad workflow"}, status_code=400)
        project.workflow = body["workflow"]
    if wanted == "ready" and not project.workflow:
        return JSONResponse({"detail": "no workflow"}, status_code=400)
    if wanted in ("ready", "prepare"):
        project.uploads.clear()
        project.finalized.clear()
        project.running_polls = 0
    project.status = "stopped" if wanted == "shutdown" else wanted
    return _answer(world, request, {"id": project.id, "status": project.status})


def controller_app(world: StandInWorld, user: str) -> Starlette:
    """One participant's controller: it knows which user it belongs to, as the real one
    does from its site_info.json."""

    def project_of(request: Request) -> StandInProject | None:
        project = world.projects.get(int(request.query_params.get("projectId", "-1")))
        return project if project is not None and user in project.members else None

    async def ping(request: Request) -> Response:
        return Response("pong")

    async def upload(request: Request) -> Response:
        if request.headers.get("origin") != ORIGIN:
            return JSONResponse({"detail": "bad origin"}, status_code=400)
        data = await request.body()
        with world.lock:
            project = project_of(request)
            if project is None or project.status != "prepare":
                return JSONResponse({"detail": "project not open for uploads"}, status_code=400)
            if request.query_params.get("finalize") == "true":
                world.finalize(user, project.id)
            else:
                name = request.query_params["fileName"]
                project.uploads.setdefault(user, []).append((name, data))
        return JSONResponse({})

    async def runs(request: Request) -> Response:
        with world.lock:
            project = project_of(request)
            if project is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            steps = list(range(len(project.workflow)))
            listed = [
                {
                    "runNr": n,
                    "startedOn": "2026-01-01T00:00:00Z",
                    "logSteps": steps,
                    "resultSteps": steps,
                }
                for n in range(project.runs, 0, -1)
            ]
        return _answer(world, request, listed)

    async def log(request: Request) -> Response:
        q = request.query_params
        return Response(f"stand-in log of {user}, run {q['run']}, step {q['step']}\n")

    async def results(request: Request) -> Response:
        with world.lock:
            project = project_of(request)
            if project is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            if world.results is not None:
                files = world.results(project, user)
            else:
                uploads = [f"{name}:{len(data)}" for name, data in project.uploads.get(user, [])]
                step = request.query_params["step"]
                files = {"result.txt": f"{user} step {step}: {uploads}\n".encode()}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return Response(buffer.getvalue(), media_type="application/zip")

    return Starlette(
        routes=[
            Route("/ping/", ping),
            Route("/file-upload/", upload, methods=["POST"]),
            Route("/project-runs/", runs),
            Route("/logs-download/", log),
            Route("/file-download/", results),
        ]
    )


_CLONE_NEWNET = 0x40000000


def _socket_in(netns: str | None, host: str) -> socket.socket:
    """A listening socket on a free port of ``host``, made in network namespace ``netns``
    (one the test made, under /run/netns) if given: the namespace is entered by a thread of
    its own, and the socket stays in it whoever serves it."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            if netns is not None:
                with open(f"/run/netns/{netns}") as handle:
                    if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), _CLONE_NEWNET):
                        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            sock = socket.socket()
            sock.bind((host, 0))
            made.append(sock)
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


@contextmanager
def serve(app: Starlette, netns: str | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """``app`` on a free port of ``host`` (loopback; with ``netns``, any address of that
    test-made namespace), in a thread, for the ``with`` block; yields its URL."""
    sock = _socket_in(netns, host)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


STANDIN_BIN = Path(__file__).resolve().parent / "fc_standin_bin"
"""The ``featurecloud`` and ``docker`` CLI stand-ins, for a site's PATH or ~/.local/bin."""


def pooled_means(project: StandInProject, user: str) -> dict[str, bytes]:
    """Plays the mean app for ``StandInWorld.results``: the column means of every member's
    uploaded data.csv pooled, as apps/mean writes them. The stand-in computes what the real
    run would hand out, so that fedsim compare can be run on the record; it checks fedsim's
    plumbing, not FeatureCloud's arithmetic."""
    frames = [
        pd.read_csv(io.BytesIO(data))
        for uploads in project.uploads.values()
        for name, data in uploads
        if name == "data.csv"
    ]
    means = pd.concat(frames).select_dtypes("number").mean()
    table = pd.DataFrame({"column": means.index, "mean": means.to_numpy()})
    return {"means.csv": table.to_csv(index=False, float_format="%.17g").encode()}


def kill_standin_controllers(home: Path) -> None:
    """Controller stand-ins a failed test left running under ``home`` (their pid files)."""
    for pid_file in (home / ".featurecloud-standin").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.stem), signal.SIGTERM)
        pid_file.unlink(missing_ok=True)


STANDIN_CLI = ("featurecloud-standin", "1.0")
"""The distribution that carries the ``featurecloud`` CLI stand-in, for a config's
``[featurecloud] cli_requirements``: provisioning installs it exactly as it installs the
real ``FeatureCloud`` package (a wheelhouse built here, an environment of its own at the
site), and then the run's ``featurecloud controller start`` is the stand-in's."""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def standin_cli_wheel(folder: Path) -> Path:
    """A wheel of ``STANDIN_CLI`` whose only content is ``fc_standin_bin/featurecloud`` as
    its script (it keeps its ``#!/usr/bin/env python3``: standard library only)."""
    name, version = STANDIN_CLI
    stem = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{stem}.data/scripts/featurecloud": (STANDIN_BIN / "featurecloud").read_bytes(),
        f"{stem}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: STAND-IN for the featurecloud CLI (fedsim's tests only)\n"
        ).encode(),
        f"{stem}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: fedsim-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = f"{stem}.dist-info/RECORD"
    lines = [_record_line(n, d) for n, d in files.items()] + [f"{record},,"]
    files[record] = ("\n".join(lines) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in files.items():
            info = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100755 if "/scripts/" in member else 0o100644) << 16
            zf.writestr(info, data)
    return wheel


@contextmanager
def standin_cli_requirements(folder: Path) -> Iterator[Path]:
    """A requirements file of the CLI stand-in's distribution, and, while inside, pip told
    where its wheel is (``PIP_FIND_LINKS``) so that fedsim can build the CLI's environment
    and wheelhouse here; later runs find both cached."""
    wheels = standin_cli_wheel(folder / "wheels").parent
    requirements = folder / "cli-requirements.txt"
    requirements.write_text("{}=={}\n".format(*STANDIN_CLI))
    before = os.environ.get("PIP_FIND_LINKS")
    os.environ["PIP_FIND_LINKS"] = str(wheels)
    try:
        yield requirements
    finally:
        if before is None:
            os.environ.pop("PIP_FIND_LINKS", None)
        else:
            os.environ["PIP_FIND_LINKS"] = before
