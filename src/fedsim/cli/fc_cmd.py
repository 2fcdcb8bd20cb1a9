"""``fedsim fc apps | create | join | contribute | monitor | download | reset``: featurecloud.ai
driven by one user from that user's own machine, with that user's own ``.env``.

Each command logs in with the file's ``FEATURECLOUD_USERNAME``/``FEATURECLOUD_PASSWORD``
and talks to that user's own controller (``FEATURECLOUD_CONTROLLER_URL``, default
``http://localhost:8000``). Which role the user has in a project comes from the website.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fedsim.featurecloud.controller import Controller
    from fedsim.featurecloud.roles import Coordinator
    from fedsim.featurecloud.website import Website

EnvFile = Annotated[
    Path,
    typer.Option(
        "--env-file",
        help="This user's own .env (mode 0600) with FEATURECLOUD_USERNAME and _PASSWORD.",
    ),
]
MinInterval = Annotated[
    float,
    typer.Option(
        min=0.0, help="Seconds between two requests of yours; keep it polite on the real site."
    ),
]
ProjectId = Annotated[int, typer.Argument(help="The project's number on featurecloud.ai.")]
Timeout = Annotated[float, typer.Option(min=0.0, help="Seconds to wait for the project.")]
Interval = Annotated[float, typer.Option(min=0.0, help="Seconds between looks at its status.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show each step.")]
DEFAULT_ENV = Path(".env")
DEFAULT_INTERVAL = 0.3


@contextmanager
def _user(
    env_file: Path, min_interval: float, verbose: bool
) -> Iterator[tuple[Website, Controller]]:
    """The user's website session and own controller, closed after the command."""
    from fedsim.featurecloud.controller import Controller
    from fedsim.featurecloud.credentials import Credentials
    from fedsim.featurecloud.http import Pacing
    from fedsim.featurecloud.website import Website
    from fedsim.logs import configure_console

    configure_console(verbose)
    credentials = Credentials.load(env_file)
    pacing = Pacing(min_interval=min_interval)
    website = Website(credentials, pacing)
    controller = Controller(credentials.controller, pacing)
    try:
        yield website, controller
    finally:
        website.close()
        controller.close()


def apps(
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """List featurecloud.ai's app store, marking the apps in your library."""
    from rich.markup import escape
    from rich.table import Table

    from fedsim.cli.output import stdout

    with _user(env_file, min_interval, verbose) as (website, _):
        owned = {int(app["id"]) for app in website.library()}
        table = Table("id", "slug", "in your library")
        for app in website.app_store():
            table.add_row(
                str(app["id"]), escape(str(app["slug"])), "yes" if int(app["id"]) in owned else ""
            )
    stdout.print(table)


def create(
    app: Annotated[list[str], typer.Argument(help="The workflow's apps in order: slugs or ids.")],
    name: Annotated[str, typer.Option(help="The project's name.")] = "fedsim",
    description: Annotated[str, typer.Option(help="The project's description.")] = "",
    participants: Annotated[
        int, typer.Option(min=0, help="How many other participants to invite (one token each).")
    ] = 0,
    project_id: Annotated[
        int | None, typer.Option(help="Reuse this project of yours instead of making one.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """As coordinator: a project with a workflow of APP..., apps added to your library if
    missing, and a token per participant (hand each to its participant only)."""
    from fedsim.cli.output import stdout
    from fedsim.featurecloud.roles import Coordinator

    with _user(env_file, min_interval, verbose) as (website, controller):
        coordinator = Coordinator.create(website, controller, app, name, description, project_id)
        tokens = coordinator.invite(participants)
    if as_json:
        stdout.print(
            json.dumps({"project_id": coordinator.project_id, "tokens": tokens}), markup=False
        )
        return
    stdout.print(f"project {coordinator.project_id}", markup=False)
    for token in tokens:
        stdout.print(f"token {token}", markup=False)


def join(
    project_id: ProjectId,
    token: Annotated[
        str,
        typer.Argument(help="The token the coordinator gave you; - reads it from stdin."),
    ],
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """As participant: join the project with your token."""
    from fedsim.cli.output import stdout
    from fedsim.featurecloud.roles import Participant

    if token == "-":  # kept off the command line, where other users of the machine see it
        token = sys.stdin.readline().strip()
    with _user(env_file, min_interval, verbose) as (website, controller):
        Participant.join(website, controller, project_id, token)
    stdout.print(f"joined project {project_id}", markup=False)


def contribute(
    project_id: ProjectId,
    files: Annotated[
        list[Path], typer.Argument(help="Your files for the project.", exists=True, dir_okay=False)
    ],
    timeout: Timeout = 3600.0,
    interval: Interval = 10.0,
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """Upload your files to your own controller and finish. As coordinator, this first opens
    uploads (everyone must have joined); as participant, it waits until they are open."""
    from fedsim.cli.output import stdout
    from fedsim.featurecloud.roles import Coordinator, Waits, open_role

    with _user(env_file, min_interval, verbose) as (website, controller):
        member = open_role(website, controller, project_id)
        if isinstance(member, Coordinator):
            member.contribute(files)
        else:
            member.contribute(files, Waits(timeout, interval))
    stdout.print(f"contributed {len(files)} files to project {project_id}", markup=False)


def _coordinator(
    website: Website, controller: Controller, project_id: int, what: str
) -> Coordinator:
    """The user as the project's coordinator; any other role is refused, naming the act."""
    from fedsim.errors import PlatformError
    from fedsim.featurecloud.roles import Coordinator, open_role

    member = open_role(website, controller, project_id)
    if not isinstance(member, Coordinator):
        raise PlatformError(f"project {project_id}: only its coordinator may {what}")
    return member


def monitor(
    project_id: ProjectId,
    timeout: Timeout = 3600.0,
    interval: Interval = 10.0,
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """As coordinator: wait until the project ends; past the timeout it is stopped (exit 5)."""
    from fedsim.cli.output import stdout
    from fedsim.featurecloud.roles import Waits

    with _user(env_file, min_interval, verbose) as (website, controller):
        status = _coordinator(website, controller, project_id, "monitor it").monitor(
            Waits(timeout, interval)
        )
    stdout.print(f"project {project_id} {status}", markup=False)


def download(
    project_id: ProjectId,
    dest: Annotated[Path, typer.Argument(help="Folder for steps/<k>/log.txt and results.zip.")],
    run: Annotated[int | None, typer.Option(help="This run instead of the newest.")] = None,
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """Download every step's log and results of a run from your own controller."""
    from fedsim.cli.output import stdout
    from fedsim.featurecloud.roles import open_role

    with _user(env_file, min_interval, verbose) as (website, controller):
        written = open_role(website, controller, project_id).download(dest, run)
    for path in written:
        stdout.print(str(path), markup=False)


def reset(
    project_id: ProjectId,
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """As coordinator: set an ended project back to ready, to run it again."""
    from fedsim.cli.output import stdout

    with _user(env_file, min_interval, verbose) as (website, controller):
        _coordinator(website, controller, project_id, "reset it").reset()
    stdout.print(f"project {project_id} ready", markup=False)


def controller(
    action: Annotated[str, typer.Argument(help="start or stop.")],
    data_dir: Annotated[
        Path, typer.Option(help="The controller's data folder (site_info.json goes there).")
    ] = Path("~/.fedsim/featurecloud-data"),
    featurecloud_cli: Annotated[
        Path | None,
        typer.Option(help="The featurecloud CLI to use; default: the one on the PATH."),
    ] = None,
    env_file: EnvFile = DEFAULT_ENV,
    min_interval: MinInterval = DEFAULT_INTERVAL,
    verbose: Verbose = False,
) -> None:
    """Make this machine ready and start its FeatureCloud controller (Docker, the
    featurecloud CLI and the website checked first, each missing one named), or stop it.
    Prints "started" or "running" (one already answered)."""
    from fedsim.cli.output import stdout
    from fedsim.errors import ConfigError
    from fedsim.featurecloud.site_setup import start_controller, stop_controller

    if action not in ("start", "stop"):
        raise ConfigError(f"fedsim fc controller: {action!r}: expected start or stop")
    with _user(env_file, min_interval, verbose) as (website, own):
        if action == "stop":
            stop_controller(featurecloud_cli)
            stdout.print("stopped", markup=False)
            return
        started = start_controller(website, own, data_dir.expanduser(), featurecloud_cli)
    stdout.print("started" if started else "running", markup=False)


COMMANDS = {
    "controller": controller,
    "apps": apps,
    "create": create,
    "join": join,
    "contribute": contribute,
    "monitor": monitor,
    "download": download,
    "reset": reset,
}
