"""Wheelhouses: everything a remote site installs, as wheels built on this machine.

A hospital's machine often has no internet, so a remote site never downloads: fedsim builds
the wheels here (where the app's environment was already built, so pip has them cached) and
ships the folder; the site installs with ``pip --no-index``. Two kinds:

- the agent's: fedsim itself (built from its source, without dependencies) and only what
  the agent, the site host and ``fedsim fc`` import (``AGENT_REQUIREMENTS`` and their
  dependencies, at the versions installed here), not the analyses' libraries;
- an app's: exactly what its environment (built here) holds.

Both carry pip's own wheel, so a site whose Python lacks ``ensurepip`` (Debian without
``python3-venv``) can still make a virtual environment (``venv --without-pip``, then pip
run from its wheel). Wheelhouses are cached like app environments, by what defines them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import fedsim
from fedsim.appenv import COMPLETE_MARKER, cache_root, env_python
from fedsim.cachelock import cache_lock
from fedsim.errors import EnvironmentBuildError
from fedsim.logs import get_logger
from fedsim.rundir import directory_digest

log = get_logger("provision")

AGENT_REQUIREMENTS = ("httpx", "numpy", "pyseccomp", "typer", "rich", "pydantic")
"""What the agent and the remote site host import beyond the standard library and fedsim;
typer, rich and pydantic for ``fedsim fc``, the featurecloud.ai participant's client that
``platform = "featurecloud"`` runs at each site (``featurecloud/client_sites.py``)."""
REQUIREMENTS_FILE = "requirements.txt"
NO_DEPS_FILE = "no-deps.txt"
"""Wheels installed without their dependencies (fedsim itself: its CLI's are not needed)."""
PIP_FILE = "pip.txt"
"""The name of pip's own wheel in the folder, to bootstrap a venv made without pip."""


@dataclass(frozen=True)
class Wheelhouse:
    """A finished folder of wheels; ``key`` names it at the site too (same key, same wheels)."""

    path: Path
    key: str
    python: str
    """``MAJOR.MINOR`` of the Python the wheels are for: the site needs the same."""

    @property
    def requirements(self) -> list[str]:
        return (self.path / REQUIREMENTS_FILE).read_text().split()

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def _closure(names: tuple[str, ...]) -> list[str]:
    """``name==version`` for ``names`` and everything they need, as installed here (markers
    evaluated for this Python, extras not followed)."""
    seen: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = f"{dist.metadata['Name']}=={dist.version}"
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(seen.values(), key=str.lower)


def _source_root() -> Path:
    """fedsim's project folder, to build its wheel from: wheels of the running code only."""
    root = Path(fedsim.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise EnvironmentBuildError(
            "remote sites need fedsim's wheel, built from its source; this fedsim is not "
            f"installed from a source checkout ({Path(fedsim.__file__).parent})"
        )
    return root


def _pip_wheel(python: str, args: list[str], dest: Path, what: str) -> None:
    argv = [python, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "-q"]
    result = subprocess.run(
        [*argv, "--wheel-dir", str(dest), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise EnvironmentBuildError(f"building the wheels of {what} failed:\n{tail}")


def _python_says(python: str, code: str) -> str:
    """What ``code`` prints under that interpreter (its pip's version, its own)."""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _pip_version(python: str) -> str:
    return _python_says(python, "import pip; print(pip.__version__)")


def _python_minor(python: str) -> str:
    return _python_says(python, "import sys; print('%d.%d' % sys.version_info[:2])")


def _build(key: str, python: str, what: str, fill: Callable[[Path], None]) -> Wheelhouse:
    """The cached wheelhouse ``key``, made by ``fill(folder)`` on first use, under a lock
    (two runs provisioning at once take turns)."""
    root = cache_root() / "wheelhouses"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    minor = _python_minor(python)
    with cache_lock(root / f"{key}.lock"):
        if not (folder / COMPLETE_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            log.info("building the wheels of %s for remote sites (first time only)", what)
            fill(folder)
            pip = f"pip=={_pip_version(python)}"
            _pip_wheel(python, ["--no-deps", pip], folder, f"{what} (pip)")
            pip_wheel = next(folder.glob("pip-*.whl"))
            (folder / PIP_FILE).write_text(pip_wheel.name + "\n")
            (folder / COMPLETE_MARKER).write_text(minor + "\n")
    return Wheelhouse(folder, key, minor)


def _key(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part.encode())
    return digest.hexdigest()[:20]


def agent_wheelhouse() -> Wheelhouse:
    """fedsim (this source, whatever its version says) and what its agent needs."""
    source = _source_root()
    requirements = _closure(AGENT_REQUIREMENTS)
    python = sys.executable
    code = directory_digest(source / "src" / "fedsim")
    key = "agent-" + _key(_python_minor(python), code, *requirements)

    def fill(folder: Path) -> None:
        _pip_wheel(python, ["--no-deps", str(source)], folder, "fedsim")
        _pip_wheel(python, ["--no-deps", *requirements], folder, "fedsim's agent")
        (folder / REQUIREMENTS_FILE).write_text("\n".join(requirements) + "\n")
        fedsim_wheel = next(folder.glob("fedsim_fc-*.whl"))
        (folder / NO_DEPS_FILE).write_text(fedsim_wheel.name + "\n")

    return _build(key, python, "fedsim's agent", fill)


def _frozen(python: str) -> list[str]:
    """Everything installed in that environment but pip (setuptools too: packages such as
    pyinstaller need it at run time, and a plain ``pip freeze`` leaves it out)."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--exclude", "pip", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line and not line.startswith("#")]


def app_wheelhouse(env: Path) -> Wheelhouse:
    """What the app's environment (built here) holds."""
    python = str(env_python(env))
    requirements = _frozen(python)
    key = "app-" + _key(env.name, *requirements)

    def fill(folder: Path) -> None:
        if requirements:
            _pip_wheel(python, ["--no-deps", *requirements], folder, f"the app ({env.name})")
        (folder / REQUIREMENTS_FILE).write_text("\n".join(requirements) + "\n")
        (folder / NO_DEPS_FILE).write_text("")

    return _build(key, python, f"the app environment {env.name}", fill)
