"""The run spec: ``fedsim.toml`` parsed and checked before anything starts.

Every problem is reported as ``<file>: <field>: <what is wrong>`` so that a user with
twenty sites knows which line to fix; all problems are reported at once, not one per try.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    Strict,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedsim.errors import ConfigError
from fedsim.relay.network import PROFILES, LinkProfile
from fedsim.safefiles import kind_name
from fedsim.sites.limits import Limits, parse_size

SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"
"""Site names become hostnames inside the sandbox, so they follow hostname rules. The run's
``name`` follows them too: it becomes part of the run directory's name, so it can never hold
``/`` or ``..`` and move the run elsewhere."""

SECRET_MODE_MASK = stat.S_IRWXG | stat.S_IRWXO

Number = Annotated[float, Strict(), AllowInfNan(False)]
"""A real number: TOML's ``inf`` and ``nan`` and a ``true`` that Python would read as 1 are
refused, as are strings; an integer is fine."""
Flag = Annotated[bool, Strict()]
"""A TOML boolean, not ``1`` or ``"yes"``."""


def _resolve(value: Path, info: ValidationInfo | None) -> Path:
    """``value`` relative to the config's folder, symlinks resolved. Paths that the system
    cannot even look at (a NUL byte, a symlink loop) are a fault of the config, not a crash."""
    base = ((info.context if info else None) or {}).get("base_dir", Path.cwd())
    try:
        return (base / value.expanduser()).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"not a usable path: {str(value)!r} ({exc})") from None


def _kind(path: Path) -> str | None:
    """What is at ``path``: "file", "folder", another kind of thing, or None when nothing is."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot look at {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return kind_name(mode)


def _check_input(value: Path, info: ValidationInfo) -> Path:
    """An input is copied into a site, so it must be a regular file or a folder: a FIFO or
    ``/dev/zero`` would be read forever. A symlink in the config is followed first."""
    path = _resolve(value, info)
    kind = _kind(path)
    if kind is None:
        raise ValueError(f"no such file or directory: {path}")
    if kind not in ("file", "folder"):
        raise ValueError(f"{path} is a {kind}; an input must be a regular file or a folder")
    return path


InputPath = Annotated[Path, AfterValidator(_check_input)]


def _readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def _size(value: str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise ValueError("a size is a positive number of bytes or a text like '4GiB'")
    return value if isinstance(value, int) else parse_size(value)


class LimitsConfig(BaseModel):
    """``[limits]`` for every site, or ``[sites.limits]`` for one: what a site may use.
    Unset fields take the run's value, then the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory: StrictInt | StrictStr | None = None
    processes: Annotated[int, Field(gt=0, strict=True)] | None = None
    cpu: Annotated[Number, Field(gt=0)] | None = None
    """Cores (1.0 = one core's time); enforced where a cpu cgroup can be made."""
    tmp: StrictInt | StrictStr | None = None
    output: StrictInt | StrictStr | None = None

    _sizes = field_validator("memory", "tmp", "output", mode="after")(_size)


class NetworkConfig(BaseModel):
    """A site's link to the relay, in numbers, optionally on top of a named ``profile``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: StrictStr | None = None
    latency_ms: Annotated[Number, Field(ge=0, le=60_000)] | None = None
    jitter_ms: Annotated[Number, Field(ge=0, le=60_000)] | None = None
    loss: Annotated[Number, Field(ge=0, lt=1)] | None = None
    """Probability that a 1460-byte segment is lost (and sent again, late)."""
    up_mbit: Annotated[Number, Field(gt=0)] | None = None
    down_mbit: Annotated[Number, Field(gt=0)] | None = None

    @field_validator("profile", mode="after")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return None if value is None else _check_profile(value)


def _check_profile(value: str) -> str:
    if value not in PROFILES:
        names = ", ".join(f'"{n}"' for n in PROFILES)
        raise ValueError(f"unknown network profile {_as_toml(value)} (known: {names})")
    return value


NetworkSetting = Annotated[StrictStr, AfterValidator(_check_profile)] | NetworkConfig
"""``network = "wan"`` or ``network = { latency_ms = 100, up_mbit = 10 }``."""


def resolve_network(setting: NetworkSetting | None) -> LinkProfile:
    """The link a setting describes: a named profile, numbers over one, or ideal."""
    if setting is None:
        return LinkProfile()
    if isinstance(setting, str):
        return PROFILES[setting]
    base = PROFILES[setting.profile] if setting.profile else LinkProfile()
    changes: dict[str, float | None] = {}
    if setting.latency_ms is not None:
        changes["latency"] = setting.latency_ms / 1000
    if setting.jitter_ms is not None:
        changes["jitter"] = setting.jitter_ms / 1000
    if setting.loss is not None:
        changes["loss"] = setting.loss
    if setting.up_mbit is not None:
        changes["up_bps"] = setting.up_mbit * 1e6
    if setting.down_mbit is not None:
        changes["down_bps"] = setting.down_mbit * 1e6
    return dataclasses.replace(base, **changes)


DEFAULT_LIMITS = Limits(memory=4 * 2**30, processes=512, cpu=1.0, tmp=2**30, output=10 * 2**30)


def resolve_limits(*layers: LimitsConfig | None) -> Limits:
    """The defaults, overridden by each layer in turn (the run's, then the site's)."""
    values = {name: getattr(DEFAULT_LIMITS, name) for name in LimitsConfig.model_fields}
    for layer in layers:
        if layer is not None:
            values.update({k: v for k, v in layer.model_dump().items() if v is not None})
    return Limits(**values)


SSH_URL = re.compile(
    r"ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
    r"(?::(?P<port>[0-9]{1,5}))?/?"
)
"""``ssh://[USER@]HOST[:PORT]``. Parsed by hand, not by urllib: urllib lowercases the host,
and an alias in ``~/.ssh/config`` is matched as written. A host or user starting with ``-``
is refused: it would read as an option to ``ssh``."""
DEFAULT_WORKDIR = "~/.fedsim"
SSH_ONLY_KEYS = ("ssh_key", "workdir", "ssh_accept_new")


@dataclass(frozen=True)
class SshTarget:
    """Where an SSH site lives and how to log in: what the connection code needs, typed.

    ``user`` and ``port`` are None when the URL leaves them out, so that ``~/.ssh/config``
    (or OpenSSH's defaults) decide, as they would for ``ssh HOST``."""

    host: str
    user: str | None = None
    port: int | None = None
    key: Path | None = None
    workdir: str = DEFAULT_WORKDIR
    accept_new: bool = False
    known_hosts: Path | None = None
    """The one known_hosts file for this host (a VM's, kept by fedsim); default: the files
    ``~/.ssh/config`` names, else ``~/.ssh/known_hosts``."""

    @property
    def address(self) -> str:
        """``[user@]host[:port]`` as written, for messages."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{self.host}{port}"


def parse_location(value: str) -> tuple[str, str | None, int | None] | None:
    """``(host, user, port)`` of an ``ssh://`` location, or None for a local site.

    Raises ValueError saying what is wrong: any scheme but ssh, a password, a path, a bad
    port."""
    if value in ("local", DASK_LOCATION, VAGRANT_LOCATION):
        return None
    scheme, sep, _ = value.partition("://")
    if not sep:
        raise ValueError(
            f'{_as_toml(value)} is not a location: give "ssh://[USER@]HOST[:PORT]", '
            '"vagrant", "dask" or "local" (or leave location out)'
        )
    if scheme != "ssh":
        raise ValueError(
            f"scheme {_as_toml(scheme)} is not supported: only ssh://[USER@]HOST[:PORT]"
        )
    match = SSH_URL.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{_as_toml(value)} is not ssh://[USER@]HOST[:PORT] (no password, path, query or "
            "spaces; USER and HOST of letters, digits, '.', '_', '-', not starting with '-')"
        )
    port = int(match["port"]) if match["port"] is not None else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    host = match["host"].removeprefix("[").removesuffix("]")
    return host, match["user"], port


DASK_LOCATION = "dask"
"""A site's ``location`` that places it on a worker of the ``[dask]`` table's cluster."""
VAGRANT_LOCATION = "vagrant"
"""A site's ``location`` that gives it a VM of its own, made by Vagrant (``[vagrant]``)."""
DASK_SCHEDULER = re.compile(
    r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})"
)
CLUSTER_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as ``(host, port)``; ValueError saying why not."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{_as_toml(value)} is not {what} (HOST:PORT, PORT 0-65535)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_scheduler(value: str | None) -> str | None:
    match = None if value is None else DASK_SCHEDULER.fullmatch(value)
    if value is not None and (match is None or not 1 <= int(match["port"]) <= 65535):
        raise ValueError(f"{_as_toml(value)} is not a scheduler address: give tcp://HOST:PORT")
    return value


def _check_cluster(value: str | None) -> str | None:
    if value is not None and CLUSTER_CLASS.fullmatch(value) is None:
        raise ValueError(
            f"{_as_toml(value)} is not a class to import: give module.Class, "
            'e.g. "distributed.LocalCluster"'
        )
    return value


def _check_relay_address(value: str) -> str:
    """Workers connect to exactly this address, so a wildcard (which no worker can dial)
    is refused rather than guessed from."""
    host, _ = parse_host_port(value, "an address for the relay")
    if host in WILDCARD_HOSTS:
        raise ValueError(
            f"{_as_toml(value)}: give an address the workers can reach, not a wildcard"
        )
    return value


class DaskConfig(BaseModel):
    """The Dask cluster that holds the sites with ``location = "dask"``: a running one
    (``scheduler``) or one that fedsim starts for the run (``cluster`` with its options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: StrictStr | None = None
    """``tcp://HOST:PORT`` of a running scheduler."""
    cluster: StrictStr | None = None
    """A deployment class imported by name (``distributed.LocalCluster``, a dask_jobqueue
    class); started with ``cluster_options`` for the run and closed at its end."""
    cluster_options: dict[str, Any] = Field(default_factory=dict)
    relay_address: StrictStr = "127.0.0.1:0"
    """Where the relay's TLS listener listens for the workers' sites (port 0: any)."""
    sites_per_worker: Annotated[int, Strict(), Field(gt=0)] = 1

    _scheduler = field_validator("scheduler", mode="after")(_check_scheduler)
    _cluster = field_validator("cluster", mode="after")(_check_cluster)
    _relay = field_validator("relay_address", mode="after")(_check_relay_address)

    @property
    def relay_bind(self) -> tuple[str, int]:
        return parse_host_port(self.relay_address, "an address for the relay")


def _check_vm_network(value: str) -> str:
    """A private IPv4 range, cut into one /30 per VM (its own libvirt network)."""
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise ValueError(
            f'{_as_toml(value)} is not an IPv4 range such as "10.77.0.0/24": {exc}'
        ) from None
    if not network.is_private or network.prefixlen > 30:
        raise ValueError(
            f"{_as_toml(value)}: give a private range (10/8, 172.16/12, 192.168/16) of at least "
            "4 addresses (/30): each VM gets a /30 of its own"
        )
    return str(network)


class VagrantConfig(BaseModel):
    """The VMs of the sites with ``location = "vagrant"``: one VM per site, made by Vagrant
    with the libvirt provider, then reached over SSH like an ``ssh://`` site. The ``network``
    names the set of VMs: configs with the same network and site names share the VMs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    box: StrictStr = "fedsim/debian12"
    """The box (``fedsim vm build-box`` makes the default one, offline-ready)."""
    cpus: Annotated[int, Strict(), Field(gt=0, le=64)] = 1
    memory: Annotated[int, Strict(), Field(ge=256)] = 1024
    """MiB per VM."""
    driver: Literal["kvm", "qemu"] = "kvm"
    """``qemu``: software emulation, for machines where KVM does not run guests."""
    cpu_model: StrictStr | None = None
    """A QEMU CPU model (``Nehalem``, ``qemu64``); default the host's with kvm, Nehalem with
    qemu."""
    network: StrictStr = "10.77.0.0/24"
    """A private IPv4 range: VM number N (in the config's order) gets the /30 number N,
    its own isolated libvirt network (the host at .1, the VM at .2)."""
    after_run: Literal["keep", "suspend", "destroy"] = "keep"

    _network = field_validator("network", mode="after")(_check_vm_network)


def _check_location(value: str | None) -> str | None:
    """Parsed now so that a typo is a config fault, not a failed connection later."""
    if value is not None:
        parse_location(value)
    return value


def _check_workdir(value: str | None) -> str | None:
    """A folder on the remote host, never looked at here: only its shape can be checked.
    Control characters and a ``~user`` form are refused (they would be read by a remote
    shell); a relative path is relative to the login's home, as for ``scp``."""
    if value is None:
        return None
    if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("a remote folder: not empty, no control characters")
    if value.startswith("~") and not (value == "~" or value.startswith("~/")):
        raise ValueError(f"{_as_toml(value)}: only ~ or ~/... (the login's home) is understood")
    return value


def check_private_file(path: Path, what: str) -> None:
    """A file of secrets (an env file, a private key, a user's featurecloud.ai login): it must
    exist, be readable by us and by nobody else. Raises ValueError naming the file and the
    chmod that mends it."""
    if _kind(path) != "file":
        raise ValueError(f"no such file: {path}")
    mode = path.stat().st_mode
    if mode & SECRET_MODE_MASK:
        raise ValueError(
            f"{path} {what} but is readable by others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    _readable(path)


def _private_file(value: Path, info: ValidationInfo, what: str) -> Path:
    path = _resolve(value, info)
    check_private_file(path, what)
    return path


class SiteConfig(BaseModel):
    """One participant: who it is, which files it holds, and where it lives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=SITE_NAME_PATTERN)]
    coordinator: Flag = False
    inputs: list[InputPath] = Field(default_factory=list)
    env_file: Path | None = None
    limits: LimitsConfig | None = None
    network: NetworkSetting | None = None
    """This site's link to the relay; default: the run's ``network``."""
    location: StrictStr | None = None
    """``ssh://[USER@]HOST[:PORT]`` for a site on another machine, ``"dask"`` for a site on
    a worker of the ``[dask]`` cluster; left out (or ``"local"``) for a sandbox on this one."""
    ssh_key: Path | None = None
    workdir: StrictStr | None = None
    """The remote folder fedsim uses; default ``~/.fedsim``."""
    ssh_accept_new: Flag = False
    """Trust an unknown host key on first use and add it to known_hosts; else it is an error.
    A known host whose key changed is always an error."""

    _location = field_validator("location", mode="after")(_check_location)
    _workdir = field_validator("workdir", mode="after")(_check_workdir)

    @field_validator("ssh_key", mode="after")
    @classmethod
    def _ssh_key_private(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """OpenSSH refuses a private key that others may read; say so now, with the fix."""
        return None if value is None else _private_file(value, info, "is a private key")

    @property
    def ssh(self) -> SshTarget | None:
        """Where this site lives over SSH, or None for a local site."""
        parsed = parse_location(self.location) if self.location is not None else None
        if parsed is None:
            return None
        host, user, port = parsed
        return SshTarget(
            host=host,
            user=user,
            port=port,
            key=self.ssh_key,
            workdir=self.workdir or DEFAULT_WORKDIR,
            accept_new=self.ssh_accept_new,
        )

    @field_validator("env_file", mode="after")
    @classmethod
    def _env_file_private(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Opened, never read: the orchestrator does not load a site's secrets."""
        return None if value is None else _private_file(value, info, "holds secrets")


def _check_app_dir(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if _kind(path) != "folder":
        raise ValueError(f"no such app directory: {path}")
    missing = [f for f in ("main.py", "requirements.txt") if _kind(path / f) != "file"]
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


def _check_requirements(value: Path | None, info: ValidationInfo) -> Path | None:
    """pip reads it later, in the middle of building an environment; read it now instead."""
    if value is None:
        return None
    path = _resolve(value, info)
    if _kind(path) != "file":
        raise ValueError(f"no such file: {path}")
    try:
        path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    return path


class StepConfig(BaseModel):
    """One app of a workflow; it sees the previous step's output of the same site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: Path
    inputs: list[InputPath] = Field(default_factory=list)
    """Extra files for every site in this step (a step's config.yml, say); they win over a
    file of the same name in the previous step's output."""
    python: str | None = None
    requirements: Path | None = None

    _app = field_validator("app", mode="after")(_check_app_dir)
    _python = field_validator("python", mode="after")(_check_python)
    _requirements = field_validator("requirements", mode="after")(_check_requirements)


def _check_http_url(value: str) -> str:
    """An address fedsim will connect to from every site: plain HTTP(S) with a host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// address with a host")
    return value


HttpUrl = Annotated[StrictStr, AfterValidator(_check_http_url)]


class FeatureCloudConfig(BaseModel):
    """``[featurecloud]``: what provisioning gives a site for featurecloud.ai, and what it
    checks the site reaches (``fedsim.featurecloud.site_provision``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cli_requirements: Path | None = None
    """What the ``featurecloud`` CLI's own environment is built from; default: fedsim's pin
    of the ``FeatureCloud`` package (``featurecloud/cli-requirements.txt``)."""
    website: HttpUrl = "https://featurecloud.ai"
    """The website every site must reach (checked before any project is made)."""
    registry: HttpUrl = "https://featurecloud.ai/v2/"
    """The image registry the controller pulls from (``featurecloud.ai/controller``)."""

    _requirements = field_validator("cli_requirements", mode="after")(_check_requirements)


class FaultConfig(BaseModel):
    """``[[faults]]``: something that goes wrong at a site on purpose (``relay/faults.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: StrictStr
    action: Literal["crash", "hang", "disconnect", "drop"]
    at: Annotated[Number, Field(ge=0)] | None = None
    """Seconds after the step started."""
    memo: StrictStr | None = None
    """When the site first sends a message with this memo (a round)."""
    after_messages: Annotated[int, Field(ge=0, strict=True)] | None = None
    """Once the site has sent this many messages."""
    duration: Annotated[Number, Field(gt=0)] | None = None
    """``disconnect`` only: seconds until the link is back; default: never."""
    count: Annotated[int, Field(gt=0, strict=True)] | None = None
    """``drop`` only: how many messages; default 1."""
    step: Annotated[int, Field(gt=0, strict=True)] = 1

    @model_validator(mode="after")
    def _one_trigger(self) -> FaultConfig:
        triggers = [t for t in ("at", "memo", "after_messages") if getattr(self, t) is not None]
        if len(triggers) != 1:
            raise ValueError("give exactly one trigger: at, memo or after_messages")
        if self.duration is not None and self.action != "disconnect":
            raise ValueError('duration is for action = "disconnect" only')
        if self.count is not None and self.action != "drop":
            raise ValueError('count is for action = "drop" only')
        return self


class CompareConfig(BaseModel):
    """``[compare]``: how ``fedsim compare`` judges the difference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerances: dict[str, Number] = Field(default_factory=dict)
    """Measure name -> tolerance, replacing the app's default; the names are checked against
    the (last) app's measures (``fedsim.compare.measures.tolerance_names``)."""


class RunConfig(BaseModel):
    """A whole run: the app (or the steps of a workflow), the sites, and how it behaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: Path | None = None
    python: str | None = None
    """The app's Python: a version ("3.10") or an interpreter's path; default fedsim's."""
    requirements: Path | None = None
    """A requirements file that replaces the app's own (for apps pinned to another era)."""
    steps: list[StepConfig] = Field(default_factory=list)
    name: Annotated[str, Field(pattern=SITE_NAME_PATTERN)] | None = None
    output_dir: Path = Field(default_factory=lambda: Path.cwd() / "runs")
    """Default: ``runs/`` where fedsim is started, where ``fedsim status`` looks too."""
    timeout: Annotated[Number, Field(gt=0)] = 3600.0
    stall_timeout: Annotated[Number, Field(gt=0)] = 120.0
    """Seconds without a state change or a message after which the run is ended as stalled."""
    seed: Annotated[int, Strict()] | None = None
    shorten_waits: Flag = False
    poll_interval: Annotated[Number, Field(gt=0, le=5)] = 0.02
    site_start: Literal["auto", "fork", "exec"] = "auto"
    """How local sites' apps start: forked from a fork-server per app environment, a fresh
    interpreter each, or (auto) forked where this machine allows it (``FEDSIM_SITE_START``
    overrides it)."""
    compare: CompareConfig = Field(default_factory=CompareConfig)
    capture_payloads: Flag = False
    """Keep every payload that passes the relay under messages/ in the run directory."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    network: NetworkSetting | None = None
    """Every site's link to the relay unless the site says otherwise; default: ideal."""
    faults: list[FaultConfig] = Field(default_factory=list)
    platform: Literal["embedded", "featurecloud"] = "embedded"
    """What runs the app: fedsim's own controller, or featurecloud.ai driven headlessly
    (each site's own login: ``fedsim.featurecloud.client_sites``)."""
    project_id: Annotated[int, Field(gt=0, strict=True)] | None = None
    """With ``platform = "featurecloud"``: reuse this project of the coordinator's."""
    featurecloud: FeatureCloudConfig = Field(default_factory=FeatureCloudConfig)
    """With ``platform = "featurecloud"``: how its sites are provisioned and checked."""
    dask: DaskConfig | None = None
    """The cluster of the sites with ``location = "dask"``."""
    vagrant: VagrantConfig | None = None
    """The VMs of the sites with ``location = "vagrant"`` (default settings if left out)."""
    sites: Annotated[list[SiteConfig], Field(min_length=1)]

    @field_validator("app", mode="after")
    @classmethod
    def _app_is_featurecloud_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _check_app_dir(value, info)

    _python = field_validator("python", mode="after")(_check_python)
    _requirements = field_validator("requirements", mode="after")(_check_requirements)

    @field_validator("output_dir", mode="after")
    @classmethod
    def _output_dir_resolved(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @model_validator(mode="wrap")
    @classmethod
    def _every_fault_at_once(
        cls, data: Any, handler: ModelWrapValidatorHandler[RunConfig], info: ValidationInfo
    ) -> RunConfig:
        """Checks that span fields run on the raw data, beside the field checks, because
        pydantic skips after-validators of the model once one field fails: one typo would
        hide, say, a second coordinator until the next try."""
        faults = list(_cross_field_faults(data, info)) if isinstance(data, dict) else []
        details = [
            InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=None)
            for loc, message in faults
        ]
        try:
            config = handler(data)
        except ValidationError as exc:
            if not details:
                raise
            field_details = [
                InitErrorDetails(
                    type=PydanticCustomError(err["type"], err["msg"]),
                    loc=err["loc"],
                    input=err["input"],
                )
                for err in exc.errors(include_url=False)
            ]
            raise ValidationError.from_exception_data(
                exc.title, [*field_details, *details]
            ) from None
        if details:
            raise ValidationError.from_exception_data(cls.__name__, details)
        return config

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

    def limits_of(self, site: SiteConfig) -> Limits:
        return resolve_limits(self.limits, site.limits)

    def links(self) -> dict[str, LinkProfile]:
        """Each site's link to the relay; empty when every link is ideal."""
        links = {s.name: resolve_network(s.network or self.network) for s in self.sites}
        return {} if all(link.is_ideal for link in links.values()) else links

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as recorded in the run directory (the TOML holds no secrets).
        Written as TOML, it loads again: SSH-only keys are left out for local sites (where
        the loader refuses them), as their defaults are."""
        data = self.model_dump(mode="json", exclude_none=True)
        if self.platform != "featurecloud":  # its defaults, refused without the platform
            data.pop("featurecloud", None)
        for site in data.get("sites", []):
            if not _is_ssh(site.get("location")):
                for key in SSH_ONLY_KEYS:
                    site.pop(key, None)
        return data


Loc = tuple[int | str, ...]


def _tables(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """The tables of an array of tables, with their index; anything else is a field error."""
    return (
        [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
        if isinstance(value, list)
        else []
    )


def _path_of(value: Any, info: ValidationInfo) -> Path | None:
    """A raw path value resolved, or None if it is not a usable path (a field error then)."""
    if not isinstance(value, str | os.PathLike):
        return None
    try:
        return _resolve(Path(value), info)
    except ValueError:
        return None


def _cross_field_faults(raw: dict[str, Any], info: ValidationInfo) -> Iterator[tuple[Loc, str]]:
    """Faults that involve more than one field, found on the raw data. Each check looks only
    at values of the right type; a value of the wrong type is already a field error."""
    steps = _tables(raw.get("steps"))
    has_app, has_steps = raw.get("app") is not None, bool(raw.get("steps"))
    if has_app and has_steps:
        yield ("app",), "give either app (one app) or [[steps]] (a workflow), not both"
    elif not has_app and not has_steps:
        yield ("app",), "missing: give app (one app) or [[steps]] (a workflow)"

    sites = _tables(raw.get("sites"))
    names = [site["name"] for _, site in sites if isinstance(site.get("name"), str)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        yield ("sites",), f"site names must be unique; repeated: {', '.join(duplicates)}"
    flags = [site.get("coordinator", False) for _, site in sites]
    if sites and all(isinstance(flag, bool) for flag in flags):
        coordinators = [
            str(site.get("name", f"sites[{i}]")) for i, site in sites if site.get("coordinator")
        ]
        if len(coordinators) != 1:
            found = ", ".join(coordinators) if coordinators else "none"
            yield ("sites",), f"exactly one site needs coordinator = true; found: {found}"
    yield from _ssh_only_faults(sites)
    yield from _injected_fault_faults(raw, names, len(steps) if has_steps else 1)
    yield from _featurecloud_faults(raw, sites)
    yield from _dask_faults(raw, sites)
    yield from _vagrant_faults(raw, sites)

    yield from _output_dir_faults(raw, steps, sites, info)
    yield from _tolerance_faults(raw, steps, info)


def _injected_fault_faults(
    raw: dict[str, Any], names: list[str], steps: int
) -> Iterator[tuple[Loc, str]]:
    """A ``[[faults]]`` entry names a site of the config and a step of the run."""
    for i, fault in _tables(raw.get("faults")):
        site = fault.get("site")
        if isinstance(site, str) and names and site not in names:
            yield ("faults", i, "site"), f"no site named {_as_toml(site)} in this config"
        step = fault.get("step")
        if isinstance(step, int) and not isinstance(step, bool) and step > steps:
            yield ("faults", i, "step"), f"the run has {steps} step{'' if steps == 1 else 's'}"


def _is_ssh(location: Any) -> bool:
    """Whether a raw location names an SSH host; a malformed one is a field error, so it
    counts as SSH here (its SSH keys are then not reported a second time)."""
    if not isinstance(location, str):
        return location is not None
    try:
        return parse_location(location) is not None
    except ValueError:
        return True


def _ssh_only_faults(sites: list[tuple[int, dict[str, Any]]]) -> Iterator[tuple[Loc, str]]:
    """An SSH key on a local site would be ignored; more likely the location was forgotten."""
    for i, site in sites:
        if _is_ssh(site.get("location")):
            continue
        for key in SSH_ONLY_KEYS:
            if key in site:
                yield (
                    ("sites", i, key),
                    'only for a site on an SSH host: set location = "ssh://HOST" or remove it',
                )


def _featurecloud_faults(
    raw: dict[str, Any], sites: list[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[Loc, str]]:
    """featurecloud.ai needs each participant's own login: a local site's env file, or an
    SSH site's (the config's, sent to that site only, or else the site's own
    ``WORKDIR/featurecloud.env``, which never leaves it); a project to reuse means nothing
    without it."""
    if raw.get("platform") != "featurecloud":
        for key in ("project_id", "featurecloud"):
            if key in raw:
                yield (key,), 'only with platform = "featurecloud"'
        return
    for i, site in sites:
        if "env_file" not in site and not _is_ssh(site.get("location")):
            yield (
                ("sites", i, "env_file"),
                'missing: with platform = "featurecloud" each site\'s env file holds its own '
                "user's FEATURECLOUD_USERNAME and FEATURECLOUD_PASSWORD",
            )


def _dask_faults(
    raw: dict[str, Any], sites: list[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[Loc, str]]:
    """A dask site needs the cluster's table, and the table names exactly one cluster."""
    table = raw.get("dask")
    if isinstance(table, dict):
        given = [key for key in ("scheduler", "cluster") if table.get(key) is not None]
        if len(given) != 1:
            yield (
                ("dask",),
                'give either scheduler = "tcp://HOST:PORT" (a running cluster) or cluster = '
                '"module.Class" (started for the run), ' + ("not both" if given else "one of them"),
            )
        if "cluster_options" in table and table.get("cluster") is None:
            yield ("dask", "cluster_options"), "only with cluster (a class fedsim starts)"
    for i, site in sites:
        if site.get("location") != DASK_LOCATION:
            continue
        if not isinstance(table, dict):
            yield (
                ("sites", i, "location"),
                'a site with location = "dask" needs a [dask] table naming the cluster',
            )
        if raw.get("platform") == "featurecloud":
            yield (
                ("sites", i, "location"),
                'platform = "featurecloud" runs a participant\'s client at its site over SSH or '
                "on this machine; a Dask worker has no way to run it",
            )


def _vagrant_faults(
    raw: dict[str, Any], sites: list[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[Loc, str]]:
    """The table means nothing without VM sites; the range must hold a /30 per VM."""
    table = raw.get("vagrant")
    vms = [i for i, site in sites if site.get("location") == VAGRANT_LOCATION]
    if isinstance(table, dict) and not vms:
        yield ("vagrant",), 'only with sites whose location = "vagrant"'
    network = table.get("network") if isinstance(table, dict) else None
    if isinstance(network, str):
        with contextlib.suppress(ValueError):
            room = ipaddress.IPv4Network(network).num_addresses // 4
            if 0 < room < len(vms):
                yield (
                    ("vagrant", "network"),
                    f"{_as_toml(network)} holds {room} VM{'s' if room != 1 else ''} (a /30 "
                    f"each); the config has {len(vms)}",
                )
    if raw.get("platform") == "featurecloud":
        for i in vms:
            yield (
                ("sites", i, "location"),
                'platform = "featurecloud" runs local sites only so far',
            )


def _output_dir_faults(
    raw: dict[str, Any],
    steps: list[tuple[int, dict[str, Any]]],
    sites: list[tuple[int, dict[str, Any]]],
    info: ValidationInfo,
) -> Iterator[tuple[Loc, str]]:
    """Runs hold every site's output; inside an app folder or an input, every site would be
    handed the others' outputs (and earlier runs) with its own files."""
    given = "output_dir" in raw
    out = _path_of(raw["output_dir"], info) if given else Path.cwd() / "runs"
    if out is None:
        return
    readable: list[tuple[str, Any]] = [("app", raw.get("app"))]
    for i, step in steps:
        readable.append((f"steps[{i}].app", step.get("app")))
        readable += _inputs_of(step, f"steps[{i}]")
    for i, site in sites:
        readable += _inputs_of(site, f"sites[{i}]")
    which = "output_dir" if given else "output_dir (default: runs/ where fedsim is started)"
    for field, value in readable:
        path = _path_of(value, info)
        if path is not None and out.is_relative_to(path):
            yield (
                ("output_dir",),
                f"{which} {out} lies inside {field} ({path}), which sites are given; "
                "put the runs outside every app and input",
            )


def _inputs_of(table: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    inputs = table.get("inputs")
    return (
        [(f"{where}.inputs[{j}]", p) for j, p in enumerate(inputs)]
        if isinstance(inputs, list)
        else []
    )


def _tolerance_faults(
    raw: dict[str, Any], steps: list[tuple[int, dict[str, Any]]], info: ValidationInfo
) -> Iterator[tuple[Loc, str]]:
    """A misspelt measure name would be ignored and the default tolerance used, silently."""
    compare = raw.get("compare")
    tolerances = compare.get("tolerances") if isinstance(compare, dict) else None
    if not isinstance(tolerances, dict) or not tolerances:
        return
    app = _path_of(steps[-1][1].get("app") if raw.get("steps") and steps else raw.get("app"), info)
    if app is None:
        return
    from fedsim.compare.measures import unknown_tolerance

    for name in tolerances:
        fault = unknown_tolerance(app.name, name)
        if fault:
            yield ("compare", "tolerances", name), fault


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``sites[1].inputs[0]``; a key that TOML would quote is quoted, so that a key holding
    a newline or ``: `` cannot split or fake a line of the report."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if BARE_KEY.fullmatch(part) else json.dumps(part)
        out += f".{key}" if out else key
    return out or "(top level)"


TYPE_ERRORS = {"float_type", "int_type", "bool_type", "string_type", "finite_number"}


def _as_toml(value: Any) -> str:
    """A value as the user wrote it in TOML, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def format_validation_error(source: Path, exc: ValidationError) -> str:
    """One line per fault: ``<file>: <field>: <what is wrong>``."""
    lines = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see `fedsim init` for every key)"
        elif err["type"] == "string_pattern_mismatch" and err["loc"][-1:] == ("name",):
            message = (
                f"{_as_toml(err['input'])} should match {SITE_NAME_PATTERN}: letters, digits and "
                "'-', at most 63, not starting with '-'"
            )
        elif err["type"] in TYPE_ERRORS:
            message = f"{message} (got {_as_toml(err['input'])})"
        lines.append(f"{source}: {_field_path(err['loc'])}: {message}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and check a run config; raise ConfigError naming the file and field on any problem.

    A config that cannot be read at all gives one line too: a device such as ``/dev/zero``
    would otherwise be read forever, and a directory or bytes that are not UTF-8 would end
    in a traceback."""
    source = Path(path)
    try:
        kind = _kind(source)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if kind is None:
        raise ConfigError(f"{source}: config file not found")
    if kind != "file":
        raise ConfigError(f"{source}: is a {kind}, not a config file")
    try:
        text = source.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return RunConfig.model_validate(raw, context={"base_dir": source.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc
