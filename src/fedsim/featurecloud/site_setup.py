"""A participant's machine made ready for featurecloud.ai: run AT the site, by its own user.

The official FeatureCloud controller is a Docker container started with the ``featurecloud``
CLI (``pip install featurecloud``), and it pulls its images from the internet; it learns
which site it is from ``DATA_DIR/site_info.json``, which the website hands out to the logged-in
user. So before a project is made, every site checks, in this order, and stops at the first
gap with a message naming what is missing and how to get it:

1. ``docker`` is installed and its engine answers (``docker info``);
2. the ``featurecloud`` CLI is installed: in a run, the one of the CLI's own environment
   (provisioned at an SSH site, in fedsim's cache for a local one: ``site_provision.py``),
   passed as ``--featurecloud-cli``; by hand, the one on the PATH, or in ``~/.local/bin``
   where ``pip install --user featurecloud`` puts it;
3. the website answers this user's login from here (a site without internet fails here);
4. ``site_info.json`` is saved (mode 0600: it identifies the site), then
   ``featurecloud controller start --data-dir DIR`` runs unless a controller already answers,
   and its ``/ping/`` is awaited.

At an SSH site, ``fedsim provision`` (and ``fedsim run``, before this) installs Docker and
the CLI (``site_provision.py``); on this machine Docker is the user's, only checked here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from fedsim.errors import PlatformError
from fedsim.featurecloud.controller import Controller
from fedsim.featurecloud.errors import ApiError
from fedsim.featurecloud.website import Website
from fedsim.logs import get_logger

log = get_logger("fc")

SITE_INFO = "site_info.json"
DEFAULT_PORT = 8000
START_TIMEOUT = 120.0
"""Seconds for ``featurecloud controller start`` and for its controller to answer: the first
start pulls the controller's image."""
USER_BIN = Path("~/.local/bin")


class SiteNotReady(PlatformError):
    """This machine lacks something the FeatureCloud controller needs (named in the message)."""


def find_program(name: str) -> str | None:
    """``name`` on the PATH, or in ``~/.local/bin`` (pip's ``--user`` scripts, which a
    non-interactive SSH login often lacks on its PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), str(USER_BIN.expanduser())])
    return shutil.which(name, path=path)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise SiteNotReady(f"{' '.join(argv[:3])} did not end within {timeout:g} s") from exc


def _tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-3:]) or "(no message)"


def _require(program: str, missing: str) -> str:
    found = find_program(program)
    if found is None:
        raise SiteNotReady(missing)
    return found


def check_docker() -> str:
    """The ``docker`` program, once its engine answers."""
    docker = _require(
        "docker",
        "no Docker here (no `docker` on the PATH): the FeatureCloud controller runs in Docker; "
        "install Docker Engine (https://docs.docker.com/engine/install/) and let this user use it",
    )
    answer = _run([docker, "info"], timeout=60)
    if answer.returncode != 0:
        raise SiteNotReady(
            f"Docker is installed ({docker}) but its engine does not answer `docker info` "
            f"(exit {answer.returncode}: {_tail(answer.stderr)}); start it, and let this "
            "user use it"
        )
    return docker


def check_featurecloud_cli(cli: Path | None = None) -> str:
    """``cli`` (the one provisioning installed in its own environment) when given, else the
    ``featurecloud`` on the PATH or in ``~/.local/bin``."""
    if cli is not None:
        if not os.access(cli, os.X_OK):
            raise SiteNotReady(
                f"no featurecloud CLI at {cli}, where provisioning put it: fedsim provision again"
            )
        return str(cli)
    return _require(
        "featurecloud",
        "no `featurecloud` CLI here (not on the PATH nor in ~/.local/bin): "
        "pip install --user featurecloud, or provision this site (fedsim provision)",
    )


def check_website(website: Website) -> None:
    """Logs in from here: a site that cannot reach the website (no internet) fails now."""
    try:
        website.login()
    except ApiError as exc:
        if exc.status is not None:
            raise
        raise SiteNotReady(
            f"cannot reach featurecloud.ai ({exc.problem}); this platform needs the internet "
            "at every site (the website, and the controller's images)"
        ) from exc


def save_site_info(website: Website, data_dir: Path) -> Path:
    """The website's identity of this site, where the controller reads it (0600)."""
    info = website.site_info()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / SITE_INFO
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(info, handle)
    path.chmod(0o600)
    return path


def _answers(controller: Controller) -> bool:
    try:
        controller.ping()
    except ApiError:
        return False
    return True


def _port(controller_url: str) -> int:
    return urlsplit(controller_url).port or DEFAULT_PORT


def start_controller(
    website: Website, controller: Controller, data_dir: Path, cli: Path | None = None
) -> bool:
    """Every check above, then the controller started (by ``cli``, see
    ``check_featurecloud_cli``); True if this call started it (and ``stop_controller``
    should stop it), False if one already answered."""
    check_docker()
    program = check_featurecloud_cli(cli)
    check_website(website)
    save_site_info(website, data_dir)
    if _answers(controller):
        log.info("a FeatureCloud controller already answers at %s", controller.url)
        return False
    argv = [program, "controller", "start", "--data-dir", str(data_dir)]
    port = _port(controller.url)
    if port != DEFAULT_PORT:
        argv += ["--port", str(port)]
    started = _run(argv, timeout=START_TIMEOUT)
    if started.returncode != 0:
        raise SiteNotReady(
            f"featurecloud controller start failed (exit {started.returncode}): "
            f"{_tail(started.stderr or started.stdout)}"
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(controller):
        if time.monotonic() >= deadline:
            raise SiteNotReady(
                f"the FeatureCloud controller did not answer at {controller.url} within "
                f"{START_TIMEOUT:g} s of starting"
            )
        time.sleep(0.5)
    log.info("FeatureCloud controller started at %s (data in %s)", controller.url, data_dir)
    return True


def stop_controller(cli: Path | None = None) -> None:
    stopped = _run([check_featurecloud_cli(cli), "controller", "stop"], timeout=START_TIMEOUT)
    if stopped.returncode != 0:
        raise PlatformError(
            f"featurecloud controller stop failed (exit {stopped.returncode}): "
            f"{_tail(stopped.stderr or stopped.stdout)}"
        )
    log.info("FeatureCloud controller stopped")
