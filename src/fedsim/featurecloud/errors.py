"""What goes wrong when driving featurecloud.ai: each error names the call that failed.

PlatformError (fedsim.errors)
├── ApiError        an answer we cannot use: the call, its status, what was missing
│   └── Throttled   429/403 still after backing off: we stop rather than retry hard
├── ProjectEnded    the project ended in error, failed or stopped
└── ProjectTimeout  a status did not come in time; a run is then stopped (exit 5)
"""

from __future__ import annotations

from fedsim.errors import ExitCode, PlatformError, RunFailed


class ApiError(PlatformError):
    """``call`` is ``METHOD /path/`` (no host, no query values that could be secrets)."""

    def __init__(self, call: str, status: int | None, problem: str) -> None:
        shown = "no answer" if status is None else f"status {status}"
        super().__init__(f"{call}: {shown}: {problem}")
        self.call = call
        self.status = status
        self.problem = problem


class Throttled(ApiError):
    """The server kept answering 429 (too many requests) or 403 (refused) while we backed
    off; a tool that keeps knocking gets its users locked out, so this ends the command."""


class ProjectEnded(PlatformError):
    def __init__(self, project_id: int, status: str) -> None:
        super().__init__(f"project {project_id} ended with status {status!r}")
        self.project_id = project_id
        self.status = status


class ProjectTimeout(PlatformError):
    """Waiting on a project's status ran out of time; ``stopped`` says whether we shut the
    project down (the coordinator's monitor does, so no run is left burning resources)."""

    exit_code = ExitCode.TIMEOUT

    def __init__(
        self, project_id: int, seconds: float, last_status: str, waiting_for: str, stopped: bool
    ) -> None:
        then = "; it was stopped" if stopped else ""
        super().__init__(
            f"project {project_id}: {waiting_for} did not happen within {seconds:g} s "
            f"(last status {last_status!r}){then}"
        )
        self.project_id = project_id
        self.stopped = stopped


class PlatformRunFailed(RunFailed):
    """A ``platform = "featurecloud"`` run stopped at one site's step; the run directory
    holds what was collected, the message names the site, the step and its error."""

    exit_code = ExitCode.PLATFORM
