"""The two roles of a FeatureCloud project, as types: each has only what its role may do.

A ``Coordinator`` owns the project: it sets up the workflow, invites, opens uploads,
monitors, resets. A ``Participant`` joins with a token. Both contribute their own data to
their own controller and download their own results (the coordinator is a data holder too).
Which one a user is comes from the website (``role`` of the project), never from a flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsim.errors import PlatformError
from fedsim.featurecloud.controller import Controller
from fedsim.featurecloud.errors import ApiError, ProjectEnded, ProjectTimeout
from fedsim.featurecloud.website import Website
from fedsim.logs import get_logger

log = get_logger("fc")

ENDED_BADLY = ("error", "failed", "stopped")
ENDED = ("finished", *ENDED_BADLY)
REUSABLE = ("init", "ready", *ENDED)


@dataclass(frozen=True)
class Waits:
    """Seconds to wait for a status and between two looks at it; tests shorten them."""

    timeout: float = 3600.0
    interval: float = 10.0


class Member:
    """What every user of a project may do: look at it, contribute, download."""

    def __init__(self, website: Website, controller: Controller, project_id: int) -> None:
        self.website = website
        self.controller = controller
        self.project_id = project_id

    def status(self) -> str:
        return str(self.website.project(self.project_id)["status"])

    def _upload(self, files: Sequence[Path]) -> None:
        self.controller.ping()
        for file in files:
            self.controller.upload(self.project_id, file)
            log.info(
                "uploaded %s for project %d to %s", file.name, self.project_id, self.controller.url
            )
        self.controller.finalize(self.project_id)
        log.info("finished uploading for project %d", self.project_id)

    def _wait(self, done: Callable[[str], bool], what: str, waits: Waits, stop: bool) -> str:
        """The first status for which ``done`` holds; ``ProjectTimeout`` when none comes."""
        deadline = time.monotonic() + waits.timeout
        while True:
            status = self.status()
            if done(status):
                return status
            if time.monotonic() >= deadline:
                if stop:
                    self.website.set_status(self.project_id, "shutdown")
                    log.warning("project %d stopped after %g s", self.project_id, waits.timeout)
                raise ProjectTimeout(self.project_id, waits.timeout, status, what, stop)
            time.sleep(min(waits.interval, max(0.0, deadline - time.monotonic())))

    def download(self, dest: Path, run: int | None = None) -> list[Path]:
        """Every step's log and results of the newest run (or run ``run``) into
        ``dest/steps/<k>/log.txt`` and ``results.zip``; the files written."""
        runs = self.controller.runs(self.project_id)
        call = "GET /project-runs/"
        chosen = next((r for r in runs if run is None or r["runNr"] == run), None)
        if chosen is None:
            wanted = "any run" if run is None else f"run {run}"
            raise ApiError(
                call, 200, f"missing in the answer: {wanted} of project {self.project_id}"
            )
        number = _step_number(chosen["runNr"], call, "runNr")
        written = []
        for key, name, fetch in (
            ("logSteps", "log.txt", self.controller.step_log),
            ("resultSteps", "results.zip", self.controller.step_results),
        ):
            steps = chosen[key]
            if not isinstance(steps, list):
                raise ApiError(call, 200, f"{key} is not a list of step numbers")
            for raw in steps:
                step = _step_number(raw, call, key)
                target = dest / "steps" / str(step) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(fetch(self.project_id, number, step))
                written.append(target)
        log.info("downloaded run %d of project %d: %d files", number, self.project_id, len(written))
        return written


def _step_number(value: object, call: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(call, 200, f"{field}: expected a step or run number, got {value!r}")
    return value


class Participant(Member):
    """A data holder invited by a token."""

    @classmethod
    def join(
        cls, website: Website, controller: Controller, project_id: int, token: str
    ) -> Participant:
        website.join(token)
        log.info("%s joined project %d", website.username, project_id)
        return cls(website, controller, project_id)

    def contribute(self, files: Sequence[Path], waits: Waits) -> None:
        """Waits until the coordinator opens uploads, then uploads and finishes."""
        self._wait(lambda s: s == "prepare", "opening of uploads", waits, stop=False)
        self._upload(files)


class Coordinator(Member):
    """The project's owner."""

    @classmethod
    def create(
        cls,
        website: Website,
        controller: Controller,
        apps: Sequence[str],
        name: str,
        description: str = "",
        project_id: int | None = None,
    ) -> Coordinator:
        """A project with a workflow of ``apps`` (slugs or ids, in order), each added to the
        coordinator's library if missing. With ``project_id``, that project is reused (reset
        first if it had ended) instead of a new one being made."""
        app_ids = _app_ids(website, apps)
        owned = {int(app["id"]) for app in website.library()}
        for app_id in app_ids:
            if app_id not in owned:
                website.add_to_library(app_id)
                log.info("added app %d to the library of %s", app_id, website.username)
        if project_id is None:
            project_id = website.create_project(name, description)
            log.info("created project %d", project_id)
        else:
            _check_reusable(website, project_id)
            log.info("reusing project %d", project_id)
        website.set_workflow(project_id, name, description, app_ids)
        return cls(website, controller, project_id)

    def invite(self, participants: int) -> list[str]:
        """One token per other participant; each is that participant's to use, once."""
        return [self.website.create_token(self.project_id) for _ in range(participants)]

    def open_uploads(self) -> None:
        self.website.set_status(self.project_id, "prepare")
        log.info("project %d open for uploads", self.project_id)

    def contribute(self, files: Sequence[Path]) -> None:
        """Opens uploads if not yet open (everyone must have joined), then uploads."""
        if self.status() == "ready":
            self.open_uploads()
        self._upload(files)

    def monitor(self, waits: Waits) -> str:
        """Polls until the project has ended; past the timeout it is shut down.
        A project that ended in error, failed or stopped is ``ProjectEnded``."""
        status = self._wait(lambda s: s in ENDED, "the end of the run", waits, stop=True)
        log.info("project %d ended: %s", self.project_id, status)
        if status in ENDED_BADLY:
            raise ProjectEnded(self.project_id, status)
        return status

    def reset(self) -> None:
        self.website.set_status(self.project_id, "ready")
        log.info("project %d reset to ready", self.project_id)


def _app_ids(website: Website, apps: Sequence[str]) -> list[int]:
    store = website.app_store()
    by_name = {str(app["slug"]): int(app["id"]) for app in store}
    by_name.update({str(app["id"]): int(app["id"]) for app in store})
    unknown = [app for app in apps if app not in by_name]
    if unknown:
        raise PlatformError(f"not in featurecloud.ai's app store: {', '.join(unknown)}")
    return [by_name[app] for app in apps]


def _check_reusable(website: Website, project_id: int) -> None:
    project = website.project(project_id)
    if project["role"] != "coordinator":
        raise PlatformError(f"project {project_id}: {website.username} is not its coordinator")
    status = str(project["status"])
    if status not in REUSABLE:
        raise PlatformError(
            f"project {project_id} is {status!r}: wait for it to end (or stop it) before reusing it"
        )
    if status in ENDED:
        website.set_status(project_id, "ready")


def open_role(
    website: Website, controller: Controller, project_id: int
) -> Coordinator | Participant:
    """The user's role in an existing project, as the website says."""
    if website.project(project_id)["role"] == "coordinator":
        return Coordinator(website, controller, project_id)
    return Participant(website, controller, project_id)
