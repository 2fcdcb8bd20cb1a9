"""Each app gets its own virtual environment, built once and shared read-only by all sites.

The ``FeatureCloud`` package and its old pins live there, never in fedsim's environment.
Environments are cached by a hash of what defines them (the requirements and the Python),
so every app with the same requirements shares one, and a changed requirement builds anew.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from fedsim.cachelock import cache_lock
from fedsim.errors import EnvironmentBuildError
from fedsim.logs import get_logger

log = get_logger("appenv")
CACHE_LAYOUT_VERSION = "2"
COMPLETE_MARKER = ".fedsim-complete"


def cache_root() -> Path:
    if "FEDSIM_CACHE_DIR" in os.environ:
        return Path(os.environ["FEDSIM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsim"


def base_python() -> str:
    """The interpreter fedsim runs on, outside any virtual environment it may be in."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def env_key(requirements: bytes, python_version: str) -> str:
    digest = hashlib.sha256()
    for part in (CACHE_LAYOUT_VERSION.encode(), python_version.encode(), requirements):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:20]


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def ensure_app_env(
    app_dir: Path, python: str | None = None, requirements: Path | None = None
) -> Path:
    """Return a ready environment for ``app_dir``, building it on first use.

    ``python`` is the interpreter to build it from (default: fedsim's); ``requirements``
    replaces the app's own requirements.txt. Both are part of the cache key.
    """
    python = python or base_python()
    requirements = requirements or app_dir / "requirements.txt"
    key = env_key(requirements.read_bytes(), _python_version(python))
    root = cache_root() / "envs"
    root.mkdir(parents=True, exist_ok=True)
    env = root / key
    with cache_lock(root / f"{key}.lock"):
        if (env / COMPLETE_MARKER).is_file():
            log.debug("app environment %s is cached", env)
            return env
        shutil.rmtree(env, ignore_errors=True)  # left over from an interrupted build
        log.info(
            "building the app environment for %s (first time only; may take a minute)", app_dir.name
        )
        _run_logged([python, "-m", "venv", str(env)], "creating the virtual environment")
        _run_logged(
            [
                str(env_python(env)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(requirements),
            ],
            f"installing {requirements}",
        )
        freeze = subprocess.run(
            [str(env_python(env)), "-m", "pip", "freeze", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            check=True,
        )
        (env / COMPLETE_MARKER).write_text(freeze.stdout)
        log.info("app environment ready: %s", env)
        return env


def env_packages(env: Path) -> list[str]:
    """What is installed in a built environment, as ``pip freeze`` saw it then."""
    return (env / COMPLETE_MARKER).read_text().splitlines()


def env_python_version(env: Path) -> str:
    return _python_version(str(env_python(env)))


def _run_logged(argv: list[str], what: str) -> None:
    tail: deque[str] = deque(maxlen=25)
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            log.debug("%s", line.rstrip())
    if process.returncode != 0:
        raise EnvironmentBuildError(f"{what} failed:\n" + "\n".join(tail))
