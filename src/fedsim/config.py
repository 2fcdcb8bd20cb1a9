"""The run spec: ``fedsim.toml`` parsed and checked before anything starts.

Every problem is reported as ``<file>: <field>: <what is wrong>`` so that a user with
twenty sites knows which line to fix; all problems are reported at once, not one per try.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedsim.errors import ConfigError

SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"
"""Site names become hostnames inside the sandbox, so they follow hostname rules."""

SECRET_MODE_MASK = stat.S_IRWXG | stat.S_IRWXO


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path.cwd())
    return (base / value.expanduser()).resolve()


class SiteConfig(BaseModel):
    """One participant: who it is, and which files it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=SITE_NAME_PATTERN)]
    coordinator: bool = False
    inputs: list[Path] = Field(default_factory=list)
    env_file: Path | None = None

    @field_validator("inputs", mode="after")
    @classmethod
    def _inputs_exist(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        return _existing_paths(value, info)

    @field_validator("env_file", mode="after")
    @classmethod
    def _env_file_private(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _resolve(value, info)
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        mode = path.stat().st_mode
        if mode & SECRET_MODE_MASK:
            raise ValueError(
                f"{path} holds secrets but is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        return path


def _check_app_dir(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if not path.is_dir():
        raise ValueError(f"no such app directory: {path}")
    missing = [f for f in ("main.py", "requirements.txt") if not (path / f).is_file()]
    if missing:
        raise ValueError(f"{path} is not a FeatureCloud app directory: no {', '.join(missing)}")
    return path


def _check_python(value: str | None) -> str | None:
    """Found now, so that a missing interpreter is reported before any site starts."""
    if value is not None:
        from fedsim.pythons import find_python

        try:
            find_python(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


def _check_file(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    path = _resolve(value, info)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


class StepConfig(BaseModel):
    """One app of a workflow; it sees the previous step's output of the same site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: Path
    inputs: list[Path] = Field(default_factory=list)
    """Extra files for every site in this step (a step's config.yml, say); they win over a
    file of the same name in the previous step's output."""
    python: str | None = None
    requirements: Path | None = None

    _app = field_validator("app", mode="after")(_check_app_dir)
    _python = field_validator("python", mode="after")(_check_python)
    _requirements = field_validator("requirements", mode="after")(_check_file)

    @field_validator("inputs", mode="after")
    @classmethod
    def _inputs_exist(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        return _existing_paths(value, info)


def _existing_paths(value: list[Path], info: ValidationInfo) -> list[Path]:
    resolved = [_resolve(p, info) for p in value]
    missing = [str(p) for p in resolved if not p.exists()]
    if missing:
        raise ValueError(f"no such file or directory: {', '.join(missing)}")
    return resolved


class CompareConfig(BaseModel):
    """``[compare]``: how ``fedsim compare`` judges the difference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerances: dict[str, float] = Field(default_factory=dict)
    """Measure name -> tolerance, replacing the app's default (see comparison.json names)."""


class RunConfig(BaseModel):
    """A whole run: the app (or the steps of a workflow), the sites, and how it behaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: Path | None = None
    python: str | None = None
    """The app's Python: a version ("3.10") or an interpreter's path; default fedsim's."""
    requirements: Path | None = None
    """A requirements file that replaces the app's own (for apps pinned to another era)."""
    steps: list[StepConfig] = Field(default_factory=list)
    name: str | None = None
    output_dir: Path = Field(default_factory=lambda: Path.cwd() / "runs")
    """Default: ``runs/`` where fedsim is started, where ``fedsim status`` looks too."""
    timeout: Annotated[float, Field(gt=0)] = 3600.0
    stall_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds without a state change or a message after which the run is ended as stalled."""
    seed: int | None = None
    shorten_waits: bool = False
    poll_interval: Annotated[float, Field(gt=0, le=5)] = 0.02
    compare: CompareConfig = Field(default_factory=CompareConfig)
    capture_payloads: bool = False
    """Keep every payload that passes the relay under messages/ in the run directory."""
    sites: Annotated[list[SiteConfig], Field(min_length=1)]

    @field_validator("app", mode="after")
    @classmethod
    def _app_is_featurecloud_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _check_app_dir(value, info)

    _python = field_validator("python", mode="after")(_check_python)
    _requirements = field_validator("requirements", mode="after")(_check_file)

    @field_validator("output_dir", mode="after")
    @classmethod
    def _output_dir_resolved(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _app_or_steps(self) -> RunConfig:
        if (self.app is None) == (not self.steps):
            raise ValueError("give either app (one app) or [[steps]] (a workflow), not both")
        return self

    @model_validator(mode="after")
    def _roles_and_names(self) -> RunConfig:
        names = [s.name for s in self.sites]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"site names must be unique; repeated: {', '.join(duplicates)}")
        coordinators = [s.name for s in self.sites if s.coordinator]
        if len(coordinators) != 1:
            found = ", ".join(coordinators) if coordinators else "none"
            raise ValueError(f"exactly one site needs coordinator = true; found: {found}")
        return self

    @property
    def coordinator(self) -> SiteConfig:
        return next(s for s in self.sites if s.coordinator)

    @property
    def workflow(self) -> list[StepConfig]:
        """The steps to run; a single app is a workflow of one. Top-level python and
        requirements apply to steps that do not set their own."""
        if self.app is not None:
            return [
                StepConfig.model_construct(
                    app=self.app, inputs=[], python=self.python, requirements=self.requirements
                )
            ]
        return [
            step.model_copy(
                update={
                    "python": step.python or self.python,
                    "requirements": step.requirements or self.requirements,
                }
            )
            for step in self.steps
        ]

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as recorded in the run directory (the TOML holds no secrets)."""
        return self.model_dump(mode="json", exclude_none=True)


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(source: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see `fedsim init` for every key)"
        lines.append(f"{source}: {_field_path(err['loc'])}: {message}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and check a run config; raise ConfigError naming the file and field on any problem."""
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return RunConfig.model_validate(raw, context={"base_dir": source.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


TEMPLATE = """\
# fedsim run config. Paths are relative to this file's folder.
# Check it with `fedsim validate fedsim.toml`, run it with `fedsim run fedsim.toml`.

# A FeatureCloud app directory (main.py, requirements.txt, states).
app = "apps/mean"
# name = "my-study"          # optional label, recorded in the run directory
# output_dir = "runs"        # where runs/<run-id>/ is written (relative to this file);
#                            # default: runs/ in the directory fedsim is started from
# timeout = 3600             # seconds; the run is stopped and marked failed after this
# stall_timeout = 120        # seconds with no state change and no message: ended as stalled
# seed = 42                  # makes randomness in fedsim reproducible
# python = "3.10"            # the app's Python (a version or a path); default fedsim's
# requirements = "reqs.txt"  # replaces the app's requirements.txt (old pins, say)
# capture_payloads = false   # keep every payload that crosses the relay, for inspection
# shorten_waits = false      # true: shrink the FeatureCloud engine's fixed sleeps
#                            # (timing only, never results) for faster simulations
# poll_interval = 0.02       # seconds between the agent's polls of the app

# A workflow instead of one app: each step sees the previous step's output of the site.
# [[steps]]
# app = "apps/normalise"
# inputs = ["normalise.yml"]  # extra files for every site in this step
# [[steps]]
# app = "apps/mean"

[[sites]]
name = "site-a"
coordinator = true           # exactly one site coordinates
inputs = ["data/site-a"]     # files or folders copied into this site's /mnt/input
# env_file = "secrets/site-a.env"  # this site's secrets (mode 0600), seen only by its app

[[sites]]
name = "site-b"
inputs = ["data/site-b"]
"""
