"""``platform = "featurecloud"``: the whole order of operations across the config's sites,
recorded in the same run directory layout as the embedded platform (so ``fedsim compare``
and ``fedsim report`` read it unchanged).

Each site acts with its own login only, AT its site: its steps are ``fedsim fc`` commands
run where the site lives (``client_sites.py``: a process here for a local site, fedsim's
agent environment over SSH for a remote one), given that site's own env file; this process
never reads a site's credentials. The one-time invitation tokens pass from the coordinator's
command to each participant's on stdin, never on a command line.

Provisioning comes first, at every site, before any project exists: an SSH site is
provisioned (the website and registry reached, Docker and the ``featurecloud`` CLI installed
when missing: ``site_provision.py``), then at every site Docker, the CLI and the website are
checked and its FeatureCloud controller is started (``featurecloud controller start``,
``site_setup.py``); every site that is not ready is named in one error. Controllers this
run started are stopped at its end.

Traffic: featurecloud.ai does not tell anyone what the sites' controllers sent each other,
so ``traffic.csv`` has no rows and the message and byte counts are null (``traffic_note``
says why); what each site moved between fedsim and its own controller (its uploads, the
logs and results it downloaded) is recorded per site under ``controller``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fedsim
from fedsim.config import RunConfig, SiteConfig
from fedsim.errors import ExitCode, FedsimError, RunTimeout
from fedsim.featurecloud.client_sites import Answer, ClientSite, client_sites
from fedsim.featurecloud.errors import PlatformRunFailed
from fedsim.featurecloud.http import Pacing
from fedsim.logs import counted, get_logger, run_log_file
from fedsim.progress import StateChange
from fedsim.rundir import RunDir, iso, new_run_id
from fedsim.safefiles import Skipped, copy_tree, prune_tree
from fedsim.sites.ssh_connect import EventLoopThread

log = get_logger("fc")

TRAFFIC_NOTE = (
    "featurecloud.ai does not report what the sites' controllers sent each other: no message "
    "or byte counts between sites are available for this platform. Per site, `controller` "
    "holds the bytes fedsim moved between the site and its own controller."
)


@dataclass(frozen=True)
class Polling:
    """How the sites' commands pace themselves; tests shorten them."""

    status_interval: float = 10.0
    """Seconds between two looks at the project's status."""
    min_interval: float = Pacing.min_interval
    """Seconds between two requests of one user."""


class FeatureCloudRun:
    """One run on featurecloud.ai: the order of operations, and its record as it goes."""

    def __init__(self, config: RunConfig, polling: Polling) -> None:
        self.config = config
        self.polling = polling
        self.run_id = new_run_id(config.name)
        self.run_dir = RunDir.create(config.output_dir, self.run_id)
        self.started = time.time()
        self.project_id: int | None = config.project_id
        self.site_status = {site.name: "pending" for site in config.sites}
        self.skipped: dict[str, list[dict[str, str]]] = {s.name: [] for s in config.sites}
        self.moved = {s.name: {"uploaded_bytes": 0, "downloaded_bytes": 0} for s in config.sites}
        self.changes: list[StateChange] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="fedsim-fc-"))
        self.loop = EventLoopThread()
        self.sites: dict[str, ClientSite] = client_sites(
            config, self.workdir, self.run_id, self.loop
        )
        self.controllers_started: list[str] = []

    def _set_status(self, site: str, status: str) -> None:
        self.site_status[site] = status
        self.changes.append(StateChange(time.time(), 1, site, status, None, None, None))

    def _where(self, name: str) -> str:
        return str(self.sites[name].describe()["location"])

    def _fc_answer(self, site: SiteConfig, *args: str, stdin: str = "") -> Answer:
        """``fedsim fc ARGS`` at ``site``, as its user. Its progress lines go to the site's
        log and the merged log."""
        answer = self.sites[site.name].fc(
            [*args, "--min-interval", str(self.polling.min_interval)], stdin
        )
        site_dir = self.run_dir.site_dir(site.name)
        site_dir.mkdir(parents=True, exist_ok=True)
        with (site_dir / "site.log").open("a", encoding="utf-8") as site_log:
            for line in answer.stderr.splitlines():
                level, message = _console_line(line)
                site_log.write(f"{iso(time.time())} fc     {message}\n")  # as run.py's lines
                log.log(level, "%s", message, extra={"site": site.name, "component": "fc"})
        if answer.code != 0:
            self._set_status(site.name, "failed")
        return answer

    def _fc(self, site: SiteConfig, *args: str, stdin: str = "") -> str:
        """Its stdout; a failure ends the run naming the site, the command and its error."""
        answer = self._fc_answer(site, *args, stdin=stdin)
        if answer.code != 0:
            message = (
                f"site {site.name}: fedsim fc {args[0]} failed (exit {answer.code}): "
                f"{_last_line(answer)}"
            )
            error_type = RunTimeout if answer.code == ExitCode.TIMEOUT else PlatformRunFailed
            raise error_type(message)
        return answer.stdout

    def execute(self) -> Path:
        self.run_dir.write_config(self.config.public_dict())
        self.run_dir.write_summary(self.summary("running", None))
        with run_log_file(self.run_dir.log_path):
            log.info(
                "run %s on featurecloud.ai: %s, record in %s",
                self.run_id,
                counted(len(self.config.sites), "site"),
                self.run_dir.path,
            )
            try:
                self._provision()
                self._order_of_operations()
            except FedsimError as exc:
                exc.run_dir = str(self.run_dir.path)
                log.error("%s", exc)
                self._record("failed", str(exc))
                raise
            finally:
                self._close()
        self._record("finished", None)
        return self.run_dir.path

    def _record(self, status: str, error: str | None) -> None:
        self.run_dir.write_traffic([])
        self.run_dir.write_states(self.changes)
        self.run_dir.write_summary(self.summary(status, error))

    def _provision(self) -> None:
        """Every site reached and its controller started, all sites at once and before any
        project is made; every site that is not ready is named, with what it lacks."""
        with ThreadPoolExecutor(max_workers=len(self.config.sites)) as pool:
            problems = [p for p in pool.map(self._provision_site, self.config.sites) if p]
        if problems:
            raise PlatformRunFailed(
                "not ready for featurecloud.ai (no project was made):\n" + "\n".join(problems)
            )

    def _provision_site(self, site: SiteConfig) -> str | None:
        """What the site lacks, or None once its controller answers."""
        place = self.sites[site.name]
        where = f"site {site.name} ({self._where(site.name)})"
        try:
            place.open()
        except FedsimError as exc:
            return f"{where}: {exc}"
        start = ["controller", "start", "--data-dir", place.data_dir(), *_cli_option(place)]
        answer = self._fc_answer(site, *start)
        if answer.code != 0:
            return f"{where}: {_last_line(answer)}"
        if answer.stdout.strip() == "started":
            self.controllers_started.append(site.name)
        log.info("site %s: FeatureCloud controller %s", site.name, answer.stdout.strip())
        return None

    def _close(self) -> None:
        """Stop the controllers this run started, leave nothing of the run at the sites."""
        by_name = {s.name: s for s in self.config.sites}
        for name in self.controllers_started:
            try:
                self._fc(by_name[name], "controller", "stop", *_cli_option(self.sites[name]))
            except FedsimError as exc:
                log.warning("site %s: %s", name, exc)
        for place in self.sites.values():
            try:
                place.close()
            except FedsimError as exc:
                log.warning("site %s: closing: %s", place.name, exc)
        self.loop.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _order_of_operations(self) -> None:
        coordinator = self.config.coordinator
        participants = [s for s in self.config.sites if not s.coordinator]
        apps = [step.app.name for step in self.config.workflow]
        create = ["create", *apps, "--name", self.config.name or "fedsim", "--json"]
        create += ["--participants", str(len(participants))]
        if self.project_id is not None:
            create += ["--project-id", str(self.project_id)]
        self.project_id, tokens = _created(self._fc(coordinator, *create), len(participants))
        project = str(self.project_id)
        for site, token in zip(participants, tokens, strict=True):
            self._fc(site, "join", project, "-", stdin=token)
        timeout = str(self.config.timeout)
        interval = str(self.polling.status_interval)
        for site in (coordinator, *participants):  # the coordinator's opens the uploads
            files = _input_files(site, self.workdir / "inputs" / site.name)
            there = self.sites[site.name].put_files(files, "inputs")
            self.moved[site.name]["uploaded_bytes"] += sum(f.stat().st_size for f in files)
            self._fc(site, "contribute", project, *there, "--timeout", timeout)
            self._set_status(site.name, "running")
        self._fc(coordinator, "monitor", project, "--timeout", timeout, "--interval", interval)
        for site in self.config.sites:
            place = self.sites[site.name]
            there = place.scratch("download")
            self._fc(site, "download", project, there)
            here = self.workdir / "downloads" / site.name
            place.fetch(there, here)
            self.moved[site.name]["downloaded_bytes"] += sum(
                p.stat().st_size for p in here.rglob("*") if p.is_file()
            )
            self._collect(site, here)
            self._set_status(site.name, "finished")

    def _collect(self, site: SiteConfig, downloaded: Path) -> None:
        """Each step's results unpacked as the embedded platform lays them out; the last
        step's are the site's ``output`` and ``results.zip``."""
        workflow = self.config.workflow
        steps = sorted(int(p.name) for p in (downloaded / "steps").iterdir())
        if len(steps) != len(workflow):
            raise PlatformRunFailed(
                f"site {site.name}: {len(steps)} steps downloaded; the workflow has {len(workflow)}"
            )
        site_dir = self.run_dir.site_dir(site.name)
        limit = self.config.limits_of(site).output
        for number, (step, config) in enumerate(zip(steps, workflow, strict=True), start=1):
            source = downloaded / "steps" / str(step)
            target = (
                site_dir / "steps" / f"{number}-{config.app.name}"
                if len(workflow) > 1
                else site_dir
            )
            target.mkdir(parents=True, exist_ok=True)
            self.skipped[site.name] += [
                {"step": str(number), "path": k.path, "reason": k.reason}
                for k in _unpack(source / "results.zip", target / "output", limit)
            ]
            shutil.copyfile(source / "results.zip", target / "results.zip")
            with (site_dir / "site.log").open("a", encoding="utf-8") as site_log:
                site_log.write((source / "log.txt").read_text(encoding="utf-8", errors="replace"))
        if len(workflow) > 1:
            last = site_dir / "steps" / f"{len(workflow)}-{workflow[-1].app.name}"
            copy_tree(last / "output", site_dir / "output")
            shutil.copyfile(last / "results.zip", site_dir / "results.zip")

    def summary(self, status: str, error: str | None) -> dict[str, Any]:
        ended = None if status == "running" else time.time()
        return {
            "run_id": self.run_id,
            "name": self.config.name,
            "platform": "featurecloud",
            "project_id": self.project_id,
            "status": status,
            "error": error,
            "started": iso(self.started),
            "ended": iso(ended),
            "duration_s": None if ended is None else round(ended - self.started, 3),
            "app": str(self.config.workflow[-1].app),
            "fedsim_version": fedsim.__version__,
            "messages": None,
            "bytes": None,
            "traffic_note": TRAFFIC_NOTE,
            "sites": {site.name: self._site_summary(site) for site in self.config.sites},
        }

    def _site_summary(self, site: SiteConfig) -> dict[str, Any]:
        """The embedded platform's keys, so ``fedsim status`` reads it; what featurecloud.ai
        does not let us see (messages, memory, the app's state) is None or empty."""
        return {
            "status": self.site_status[site.name],
            "coordinator": site.coordinator,
            "exit_code": None,
            "messages_sent": None,
            "bytes_sent": None,
            "messages_received": None,
            "bytes_received": None,
            "app": {},
            "memory": {},
            "controller": self.moved[site.name],
            "skipped_outputs": self.skipped[site.name],
            "placement": {
                **self.sites[site.name].describe(),
                "platform": "featurecloud",
                "project_id": self.project_id,
            },
        }


CONSOLE_LINE = re.compile(r"^\[[\d:]+\] (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[^:]*: (.*)$")
"""A record as the site's ``fedsim fc`` printed it (``logs.configure_console``, piped)."""


def _console_line(line: str) -> tuple[int, str]:
    """The level and message of a line the site's command printed; other lines (its error,
    a traceback) as they are, at INFO."""
    match = CONSOLE_LINE.match(line)
    if match is None:
        return logging.INFO, line
    return logging.getLevelName(match[1]), match[2]


def _cli_option(place: ClientSite) -> list[str]:
    """``fedsim fc controller``'s option naming the featurecloud CLI of the site's own."""
    return ["--featurecloud-cli", place.featurecloud_cli()]


def _last_line(answer: Answer) -> str:
    """The command's error as ``fedsim``'s CLI printed it (from its ``error:`` on, all its
    lines: a config error names each field), else its last line."""
    lines = answer.stderr.strip().splitlines() or ["(no message)"]
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not starts:
        return lines[-1]
    return " ".join(lines[starts[-1] :]).removeprefix("error: ")


def _created(output: str, participants: int) -> tuple[int, list[str]]:
    """The project and the tokens from ``fedsim fc create --json``'s output."""
    try:
        created = json.loads(output)
        project_id, tokens = int(created["project_id"]), [str(t) for t in created["tokens"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise PlatformRunFailed(f"fedsim fc create printed no project and tokens ({exc})") from exc
    if len(tokens) != participants:
        raise PlatformRunFailed(f"fedsim fc create gave {len(tokens)} tokens for {participants}")
    return project_id, tokens


def _input_files(site: SiteConfig, staging: Path) -> list[Path]:
    """The site's inputs as the files to upload: a folder's contents merged as the embedded
    platform puts them in ``/mnt/input``, then every file by its name."""
    for item in site.inputs:
        if item.is_dir():
            copy_tree(item, staging)
        else:
            staging.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, staging / item.name)
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


def _unpack(archive: Path, dest: Path, limit: int) -> list[Skipped]:
    """Results come from a server: names are sanitised by ``zipfile`` (no absolute paths,
    no ``..``), the total size is held to the site's output limit, and anything but regular
    files and folders is removed (and returned, to be recorded)."""
    with zipfile.ZipFile(archive) as zf:
        size = sum(info.file_size for info in zf.infolist())
        if size > limit:
            raise PlatformRunFailed(
                f"{archive.name}: {size} bytes unpacked, over the limit {limit}"
            )
        zf.extractall(dest)
    return prune_tree(dest)


def run_featurecloud(config: RunConfig, polling: Polling | None = None) -> Path:
    """Run ``config`` on featurecloud.ai; the run directory."""
    return FeatureCloudRun(config, polling or Polling()).execute()
