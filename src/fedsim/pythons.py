"""Find the Python an app asks for: a version such as "3.10", or an interpreter's path.

Published FeatureCloud apps are pinned to their era, so an app may need an older or newer
Python than fedsim's. Candidates are tried in order (PATH, pyenv, uv) and each is asked for
its own version, because a name on PATH may be a shim that does not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from fedsim.errors import ConfigError

VERSION_PATTERN = re.compile(r"^\d+\.\d+(\.\d+)?$")
_PROBE = "import sys; print('.'.join(map(str, sys.version_info[:3])), sys.executable)"


def _probe(candidate: str) -> tuple[str, str] | None:
    """(version, real executable) of a working interpreter, or None."""
    try:
        out = subprocess.run(
            [candidate, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    version, _, executable = out.stdout.strip().partition(" ")
    return version, executable


def _pyenv_candidates(version: str) -> list[str]:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    pyenv = shutil.which("pyenv")
    if pyenv:
        out = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        root = out.stdout.strip() or root
    minor = ".".join(version.split(".")[:2])
    found = sorted(
        Path(root, "versions").glob(f"{version}*"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")],
        reverse=True,
    )
    return [str(p / "bin" / f"python{minor}") for p in found]


def _uv_candidates(version: str) -> list[str]:
    uv = shutil.which("uv")
    if not uv:
        return []
    out = subprocess.run([uv, "python", "find", version], capture_output=True, text=True)
    return [out.stdout.strip()] if out.returncode == 0 and out.stdout.strip() else []


def find_python(spec: str) -> Path:
    """The interpreter for ``spec``; ConfigError saying where it looked when there is none."""
    if not VERSION_PATTERN.match(spec):
        path = Path(spec).expanduser()
        probed = _probe(str(path))
        if probed is None:
            raise ConfigError(f"python {spec!r} is not a working Python interpreter")
        return Path(probed[1])
    minor = ".".join(spec.split(".")[:2])
    candidates = [
        *filter(None, [shutil.which(f"python{minor}")]),
        *_pyenv_candidates(spec),
        *_uv_candidates(spec),
    ]
    for candidate in candidates:
        probed = _probe(candidate)
        if probed and (probed[0] == spec or probed[0].startswith(spec + ".")):
            return Path(probed[1])
    raise ConfigError(
        f"no Python {spec} found (looked on PATH for python{minor}, in pyenv and through uv); "
        f"install it (e.g. `pyenv install {spec}` or `uv python install {spec}`) or give a path"
    )
