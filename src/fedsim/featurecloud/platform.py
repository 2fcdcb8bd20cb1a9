"""``platform = "featurecloud"``: the whole order of operations across the config's sites,
recorded in the same run directory layout as the embedded platform (so ``fedsim compare``
reads it unchanged).

Each site acts with its own login only: its commands run as separate ``fedsim fc``
processes given that site's env file, in an environment stripped of every
``FEATURECLOUD_*`` variable; this process never reads a site's credentials. The one-time
invitation tokens pass from the coordinator's process to each participant's on stdin, never
on a command line. Local sites
only so far; each site's FeatureCloud controller must already be running at the URL of its
env file (``FEATURECLOUD_CONTROLLER_URL``): starting it (``featurecloud controller start``,
which needs Docker) is not done by fedsim yet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fedsim
from fedsim.config import RunConfig, SiteConfig
from fedsim.errors import ExitCode, RunFailed, RunTimeout
from fedsim.featurecloud.errors import PlatformRunFailed
from fedsim.featurecloud.http import Pacing
from fedsim.logs import counted, get_logger, run_log_file
from fedsim.rundir import RunDir, iso, new_run_id
from fedsim.safefiles import Skipped, copy_tree, prune_tree

log = get_logger("fc")


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

    def _fc(self, site: SiteConfig, *args: str, stdin: str | None = None) -> str:
        """``fedsim fc ARGS`` as ``site``'s user; its stdout. Its progress lines go to the
        site's log and the merged log; a failure ends the run naming the site."""
        assert site.env_file is not None  # the config requires it on this platform
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURECLOUD_")}
        command = [sys.executable, "-m", "fedsim", "fc", *args]
        command += [
            "--env-file",
            str(site.env_file),
            "--min-interval",
            str(self.polling.min_interval),
        ]
        done = subprocess.run(
            command, input=stdin or "", capture_output=True, text=True, env=env, check=False
        )
        site_dir = self.run_dir.site_dir(site.name)
        site_dir.mkdir(parents=True, exist_ok=True)
        with (site_dir / "site.log").open("a", encoding="utf-8") as site_log:
            for line in done.stderr.splitlines():
                site_log.write(f"{iso(time.time())} fc     {line}\n")
                log.info("%s", line, extra={"site": site.name, "component": "fc"})
        if done.returncode != 0:
            self.site_status[site.name] = "failed"
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            message = (
                f"site {site.name}: fedsim fc {args[0]} failed (exit {done.returncode}): {last}"
            )
            error_type = RunTimeout if done.returncode == ExitCode.TIMEOUT else PlatformRunFailed
            raise error_type(message)
        return done.stdout

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
                self._order_of_operations()
            except RunFailed as exc:
                exc.run_dir = str(self.run_dir.path)
                log.error("%s", exc)
                self.run_dir.write_summary(self.summary("failed", str(exc)))
                raise
        self.run_dir.write_summary(self.summary("finished", None))
        return self.run_dir.path

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
        with tempfile.TemporaryDirectory(prefix="fedsim-fc-") as tmp:
            for site in (coordinator, *participants):  # the coordinator's opens the uploads
                files = _input_files(site, Path(tmp) / site.name)
                self._fc(site, "contribute", project, *map(str, files), "--timeout", timeout)
                self.site_status[site.name] = "running"
        self._fc(coordinator, "monitor", project, "--timeout", timeout, "--interval", interval)
        for site in self.config.sites:
            with tempfile.TemporaryDirectory(prefix="fedsim-fc-") as tmp:
                self._fc(site, "download", project, tmp)
                self._collect(site, Path(tmp))
            self.site_status[site.name] = "finished"

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
            "skipped_outputs": self.skipped[site.name],
            "placement": {"kind": "featurecloud", "project_id": self.project_id},
        }


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
