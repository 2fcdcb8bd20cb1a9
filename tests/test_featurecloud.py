"""fedsim's featurecloud.ai client against the stand-ins (tests/fc_standin.py), over real
sockets on loopback: the order of operations, token refresh, back-off, timeouts, errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.errors import ConfigError, ExitCode
from fedsim.featurecloud import (
    ApiError,
    Coordinator,
    Credentials,
    Participant,
    ProjectEnded,
    ProjectTimeout,
    Throttled,
)
from fedsim.featurecloud.controller import Controller
from fedsim.featurecloud.credentials import CONTROLLER_URL, PASSWORD, USERNAME, WEBSITE_URL
from fedsim.featurecloud.http import Pacing
from fedsim.featurecloud.roles import Waits
from fedsim.featurecloud.website import Website
from tests.fc_standin import (
    STANDIN_BIN,
    StandInWorld,
    controller_app,
    kill_standin_controllers,
    serve,
    website_app,
)

USERS = {"carla": "pw-carla-1", "ana": "pw-ana-2", "ben": "pw-ben-3"}
COORDINATOR, PARTICIPANTS = "carla", ("ana", "ben")
FAST = Pacing(min_interval=0.0, backoff=0.02, max_backoff=0.1, retries=3, timeout=5.0)
QUICK = Waits(timeout=5.0, interval=0.02)
runner = CliRunner()


@dataclass
class StandIns:
    world: StandInWorld
    website: str
    controllers: dict[str, str]
    clients: list[Website | Controller] = field(default_factory=list)

    def credentials(self, user: str) -> Credentials:
        return Credentials(user, USERS[user], self.website, self.controllers[user])

    def user(self, user: str) -> tuple[Website, Controller]:
        creds = self.credentials(user)
        clients = Website(creds, FAST), Controller(creds.controller, FAST)
        self.clients += clients
        return clients


@pytest.fixture
def standins() -> Iterator[StandIns]:
    world = StandInWorld(users=dict(USERS))
    with ExitStack() as stack:
        website = stack.enter_context(serve(website_app(world)))
        controllers = {u: stack.enter_context(serve(controller_app(world, u))) for u in USERS}
        standins = StandIns(world, website, controllers)
        yield standins
        for client in standins.clients:
            client.close()


def data_file(tmp_path: Path, user: str) -> Path:
    path = tmp_path / f"{user}-data.csv"
    path.write_text(f"x\n{len(user)}\n")
    return path


def run_project(s: StandIns, tmp_path: Path, project_id: int | None = None) -> Coordinator:
    """The whole order with the library: create, invite, join, open, upload, (not monitor)."""
    coordinator = Coordinator.create(*s.user(COORDINATOR), ["mean", "pca"], "study", "", project_id)
    tokens = coordinator.invite(len(PARTICIPANTS))
    participants = [
        Participant.join(*s.user(u), coordinator.project_id, t)
        for u, t in zip(PARTICIPANTS, tokens, strict=True)
    ]
    coordinator.contribute([data_file(tmp_path, COORDINATOR)])
    for user, participant in zip(PARTICIPANTS, participants, strict=True):
        participant.contribute([data_file(tmp_path, user)], QUICK)
    return coordinator


def env_file(tmp_path: Path, s: StandIns, user: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"{user}.env"
    path.write_text(
        f"{USERNAME}={user}\n{PASSWORD}='{USERS[user]}'\n"
        f"{WEBSITE_URL}={s.website}\n{CONTROLLER_URL}={s.controllers[user]}\n"
    )
    path.chmod(mode)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads a user's .env into os.environ and logs to the runner's stderr; both
    undone after the test."""
    for key in (USERNAME, PASSWORD, WEBSITE_URL, CONTROLLER_URL):
        monkeypatch.setenv(key, "")
    yield
    root = logging.getLogger("fedsim")
    for handler in list(root.handlers):
        if getattr(handler, "_fedsim_console", False):
            root.removeHandler(handler)


def fc(*args: str | Path | int, user_env: Path) -> tuple[int, str]:
    """Exit code and stdout of ``fedsim fc ...`` as the user of ``user_env``; stderr (the
    progress lines and errors) is in ``fc_stderr``."""
    result = runner.invoke(
        app, ["fc", *map(str, args), "--env-file", str(user_env), "--min-interval", "0"]
    )
    fc.stderr = result.stderr  # type: ignore[attr-defined]
    return result.exit_code, result.stdout


@pytest.mark.usefixtures("clean_env")
def test_the_whole_order_with_a_coordinator_and_two_participants_each_with_own_env(
    standins: StandIns, tmp_path: Path
) -> None:
    envs = {u: env_file(tmp_path, standins, u) for u in USERS}
    code, out = fc("apps", user_env=envs[COORDINATOR])
    assert code == 0, out
    assert "mean" in out and "pca" in out
    code, out = fc(
        "create", "mean", "pca", "--participants", "2", "--json", user_env=envs[COORDINATOR]
    )
    assert code == 0, out
    created = json.loads(out)
    project = created["project_id"]
    assert standins.world.libraries[COORDINATOR] == {7, 9}  # both apps added to the library
    for user, token in zip(PARTICIPANTS, created["tokens"], strict=True):
        assert fc("join", project, token, user_env=envs[user]) == (0, f"joined project {project}\n")
    assert standins.world.projects[project].members == set(USERS)
    for user in (COORDINATOR, *PARTICIPANTS):  # the coordinator's contribute opens uploads
        code, out = fc("contribute", project, data_file(tmp_path, user), user_env=envs[user])
        assert code == 0, out
    code, out = fc("monitor", project, "--interval", "0.02", user_env=envs[COORDINATOR])
    assert (code, out) == (0, f"project {project} finished\n")
    for user in USERS:
        code, out = fc("download", project, tmp_path / f"out-{user}", user_env=envs[user])
        assert code == 0, out
        with zipfile.ZipFile(tmp_path / f"out-{user}" / "steps" / "1" / "results.zip") as zf:
            result = zf.read("result.txt").decode()
        assert result.startswith(f"{user} step 1: ['{user}-data.csv:")  # its own data only
        assert (tmp_path / f"out-{user}" / "steps" / "0" / "log.txt").is_file()
    agents = {agent for _, _, _, agent in standins.world.log}
    assert len(agents) == 1 and agents.pop().startswith("fedsim/")
    code, out = fc("reset", project, user_env=envs[COORDINATOR])
    assert code == 0 and standins.world.projects[project].status == "ready"


@pytest.mark.usefixtures("clean_env")
def test_a_participant_may_not_monitor_or_reset_and_a_role_has_only_its_operations(
    standins: StandIns, tmp_path: Path
) -> None:
    coordinator = run_project(standins, tmp_path)
    ana_env = env_file(tmp_path, standins, "ana")
    code, _ = fc("monitor", coordinator.project_id, user_env=ana_env)
    assert code == ExitCode.PLATFORM
    assert f"project {coordinator.project_id}: only its coordinator may monitor it" in fc.stderr
    for operation in ("invite", "open_uploads", "monitor", "reset", "create"):
        assert not hasattr(Participant, operation)
    assert not hasattr(Coordinator, "join")


def test_an_expired_access_token_is_refreshed_and_an_expired_refresh_logs_in_again(
    standins: StandIns,
) -> None:
    website, _ = standins.user("ana")
    assert website.library() == []
    standins.world.expire_access_tokens()
    assert website.library() == []
    assert standins.world.calls("POST", "/api/auth/token/refresh/") == 1
    assert standins.world.calls("POST", "/api/auth/login/") == 1
    standins.world.expire_access_tokens()
    standins.world.refresh.clear()
    assert website.library() == []
    assert standins.world.calls("POST", "/api/auth/login/") == 2


def test_429_is_backed_off_then_a_clear_stop(standins: StandIns) -> None:
    website, _ = standins.user("ana")
    standins.world.throttle = 2
    assert [a["slug"] for a in website.app_store()] == ["mean", "pca"]
    logins = [t for t, _, path, _ in standins.world.log if path == "/api/auth/login/"]
    assert len(logins) == 3
    gaps = [b - a for a, b in pairwise(logins)]
    assert gaps[0] >= FAST.backoff and gaps[1] >= 2 * FAST.backoff  # waited, doubling
    standins.world.throttle = 100
    before = len(standins.world.log)
    with pytest.raises(Throttled) as caught:
        website.app_store()
    assert len(standins.world.log) - before == FAST.retries + 1  # then it stopped knocking
    assert caught.value.call == "GET /api/apps/" and caught.value.status == 429
    assert "still refused after 3 back-offs; stopped" in str(caught.value)


def test_requests_of_one_user_keep_to_the_rate_limit(standins: StandIns) -> None:
    website = Website(standins.credentials("ben"), Pacing(min_interval=0.2))
    standins.clients.append(website)
    for _ in range(4):
        website.library()
    stamps = [t for t, *_ in standins.world.log]
    # as the server sees them: a loaded machine delays one request more than the next by a
    # few ms (0.039 s was seen for 0.05 s); unpaced, they come within a few ms of each other
    assert min(b - a for a, b in pairwise(stamps)) >= 0.15


def test_a_project_that_never_finishes_hits_the_timeout_and_is_stopped(
    standins: StandIns, tmp_path: Path
) -> None:
    standins.world.finish_after = None
    coordinator = run_project(standins, tmp_path)
    assert standins.world.projects[coordinator.project_id].status == "running"
    with pytest.raises(ProjectTimeout) as caught:
        coordinator.monitor(Waits(timeout=0.3, interval=0.02))
    assert caught.value.exit_code == ExitCode.TIMEOUT and caught.value.stopped
    assert standins.world.projects[coordinator.project_id].status == "stopped"
    assert "did not happen within 0.3 s (last status 'running'); it was stopped" in str(
        caught.value
    )


def test_a_project_that_ends_in_error_fails_the_monitor(standins: StandIns, tmp_path: Path) -> None:
    standins.world.finish_as = "error"
    coordinator = run_project(standins, tmp_path)
    with pytest.raises(ProjectEnded, match=r"^project 1 ended with status 'error'$") as caught:
        coordinator.monitor(QUICK)
    assert caught.value.exit_code == ExitCode.PLATFORM


def test_a_participant_waits_for_uploads_to_open_and_gives_up_in_time(
    standins: StandIns, tmp_path: Path
) -> None:
    coordinator = Coordinator.create(*standins.user(COORDINATOR), ["mean"], "study")
    (token,) = coordinator.invite(1)
    ana = Participant.join(*standins.user("ana"), coordinator.project_id, token)
    with pytest.raises(ProjectTimeout) as caught:
        ana.contribute([data_file(tmp_path, "ana")], Waits(timeout=0.1, interval=0.02))
    assert not caught.value.stopped  # a participant never stops the project
    assert standins.world.projects[coordinator.project_id].status == "ready"


@pytest.mark.usefixtures("clean_env")
def test_a_missing_field_names_the_call_the_status_and_the_field(
    standins: StandIns, tmp_path: Path
) -> None:
    standins.world.drop["/api/auth/login/"] = "refresh"
    website, _ = standins.user("ana")
    with pytest.raises(ApiError) as caught:
        website.library()
    assert str(caught.value) == "POST /api/auth/login/: status 200: missing in the answer: refresh"
    code, _ = fc("apps", user_env=env_file(tmp_path, standins, "ana"))
    assert code == ExitCode.PLATFORM
    assert "POST /api/auth/login/: status 200: missing in the answer: refresh" in fc.stderr
    assert USERS["ana"] not in fc.stderr
    standins.world.drop = {"/project-runs/": "resultSteps"}
    coordinator = run_project(standins, tmp_path)
    coordinator.monitor(QUICK)
    with pytest.raises(
        ApiError, match=r"^GET /project-runs/: status 200: missing in the answer: resultSteps$"
    ):
        coordinator.download(tmp_path / "out")


def test_an_existing_project_is_reused_instead_of_a_new_one(
    standins: StandIns, tmp_path: Path
) -> None:
    first = run_project(standins, tmp_path)
    assert first.monitor(QUICK) == "finished"
    again = run_project(standins, tmp_path, project_id=first.project_id)
    assert again.project_id == first.project_id and len(standins.world.projects) == 1
    assert again.monitor(QUICK) == "finished"
    written = again.download(tmp_path / "out")
    assert again.controller.runs(again.project_id)[0]["runNr"] == 2
    assert len(written) == 4  # two steps, a log and results each


def test_a_participant_cannot_reuse_someone_elses_project(
    standins: StandIns, tmp_path: Path
) -> None:
    first = run_project(standins, tmp_path)
    first.monitor(QUICK)
    with pytest.raises(Exception, match="ana is not its coordinator"):
        Coordinator.create(*standins.user("ana"), ["mean"], "x", project_id=first.project_id)


def test_credentials_come_from_a_private_env_file_only(
    standins: StandIns, tmp_path: Path, clean_env: None
) -> None:
    loose = env_file(tmp_path, standins, "ana", mode=0o644)
    with pytest.raises(
        ConfigError, match=rf"readable by others \(mode 0644\); run: chmod 600 {loose}"
    ):
        Credentials.load(loose)
    loose.chmod(0o600)
    creds = Credentials.load(loose)
    assert (creds.username, creds.controller) == ("ana", standins.controllers["ana"])
    assert USERS["ana"] not in repr(creds)
    os.environ[PASSWORD] = ""
    bare = tmp_path / "bare.env"
    bare.write_text(f"{USERNAME}=ana\n")
    bare.chmod(0o600)
    with pytest.raises(ConfigError, match=rf"^{bare}: {PASSWORD}: missing"):
        Credentials.load(bare)


@pytest.mark.usefixtures("clean_env")
def test_fc_controller_start_names_what_the_machine_lacks_then_starts_and_stops_it(
    standins: StandIns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, only_docker = tmp_path / "home", tmp_path / "only-docker"
    home.mkdir()
    only_docker.mkdir()
    (only_docker / "docker").symlink_to(STANDIN_BIN / "docker")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{only_docker}{os.pathsep}/usr/bin:/bin")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = tmp_path / "ana.env"
    env.write_text(
        f"{USERNAME}=ana\n{PASSWORD}={USERS['ana']}\n{WEBSITE_URL}={standins.website}\n"
        f"{CONTROLLER_URL}=http://127.0.0.1:{port}\n"
    )
    env.chmod(0o600)
    data = tmp_path / "data"
    code, _ = fc("controller", "start", "--data-dir", data, user_env=env)
    assert code == ExitCode.PLATFORM
    assert "no `featurecloud` CLI here (not on the PATH nor in ~/.local/bin)" in fc.stderr
    assert standins.world.calls("POST", "/api/auth/login/") == 0  # checked before any call
    (home / ".local" / "bin").mkdir(parents=True)  # where pip install --user puts it
    (home / ".local" / "bin" / "featurecloud").symlink_to(STANDIN_BIN / "featurecloud")
    try:
        assert fc("controller", "start", "--data-dir", data, user_env=env) == (0, "started\n")
        site_info = json.loads((data / "site_info.json").read_text())
        assert site_info["siteName"] == "ana"
        assert (data / "site_info.json").stat().st_mode & 0o777 == 0o600
        assert fc("controller", "start", "--data-dir", data, user_env=env) == (0, "running\n")
        assert fc("controller", "stop", user_env=env) == (0, "stopped\n")
    finally:
        kill_standin_controllers(home)
    code, _ = fc("controller", "start", "--data-dir", data, user_env=env)
    assert code == 0  # started again: the first was stopped
    assert fc("controller", "stop", user_env=env) == (0, "stopped\n")
