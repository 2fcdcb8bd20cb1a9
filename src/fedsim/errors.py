"""One error tree for fedsim; the CLI turns each branch into a short message and a stable exit code.

    FedsimError
    ├── ConfigError      the config (or a file it names) is wrong; nothing was started
    ├── EnvironmentBuildError  the app's environment could not be built
    ├── SandboxError     this machine cannot build a site sandbox (missing bwrap, ...)
    │   └── VmError      Vagrant could not build, start or describe a site's VM
    ├── SiteUnreachable  a site's host cannot be reached or logged into over SSH
    │   └── HostKeyError the host's key is unknown (and not to be trusted) or changed
    ├── PlatformError    featurecloud.ai or a FeatureCloud controller answered unexpectedly,
    │                    refused us, or a project ended badly (fedsim.featurecloud.errors)
    └── RunFailed        the run started and did not finish
        ├── SiteFailed   a site's app or agent failed
        │   └── OutputTooLarge  its output passed its byte limit
        ├── RunTimeout   the config's timeout ran out
        ├── RunStalled   nothing happened for the config's stall_timeout
        ├── Interrupted  Ctrl-C, SIGTERM or SIGHUP ended the run
        └── ComparisonFailed  federated and centralised differ beyond a tolerance, or
                              nothing could be compared

Errors from libraries underneath are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``fedsim`` command; scripts and Snakemake rules may rely on them."""

    OK = 0
    CONFIG = 2
    ENVIRONMENT = 3
    SITE_FAILED = 4
    TIMEOUT = 5
    SANDBOX = 6
    COMPARISON = 7
    STALLED = 8
    NOT_READY = 9
    PLATFORM = 10
    HANGUP = 129
    INTERRUPTED = 130
    TERMINATED = 143


class FedsimError(Exception):
    exit_code: ExitCode = ExitCode.CONFIG
    run_dir: str | None = None
    """Set once a run directory exists: the CLI prints it last, whatever went wrong."""
    logged: bool = False
    """Set once the run has logged the whole message (a site's last lines, a stall report):
    the CLI then repeats only its first line, so a traceback is not printed twice."""


class ConfigError(FedsimError):
    exit_code = ExitCode.CONFIG


class EnvironmentBuildError(FedsimError):
    exit_code = ExitCode.ENVIRONMENT


class SandboxError(FedsimError):
    exit_code = ExitCode.SANDBOX


class VmError(SandboxError):
    """A site's VM (or the box it is made from) could not be built, started, stopped or
    described; the message holds the end of what Vagrant or the box build said."""


class SiteUnreachable(FedsimError):
    """Connecting or logging into a site's host failed; names the site and the host, so a
    config with twenty SSH sites says which one to look at."""

    exit_code = ExitCode.NOT_READY

    def __init__(self, site: str, host: str, reason: str) -> None:
        super().__init__(f"site {site} ({host}): {reason}")
        self.site = site
        self.host = host
        self.reason = reason


class HostKeyError(SiteUnreachable):
    """The host's key is not in known_hosts (and ``ssh_accept_new`` is off) or differs from
    the one recorded there: never connected past, whatever the config says."""


class PlatformError(FedsimError):
    """The platform that runs the app (featurecloud.ai, a participant's FeatureCloud
    controller) gave an answer fedsim cannot use; the message names the call and the status."""

    exit_code = ExitCode.PLATFORM


class RunFailed(FedsimError):
    """The run started but did not finish; ``run_dir`` holds everything collected."""

    exit_code = ExitCode.SITE_FAILED

    def __init__(self, message: str, run_dir: str | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class SiteFailed(RunFailed):
    exit_code = ExitCode.SITE_FAILED


class RunTimeout(RunFailed):
    exit_code = ExitCode.TIMEOUT


class RunStalled(RunFailed):
    """No site changed state and no message moved for ``stall_timeout``: a deadlock, most
    often an app waiting for a message nobody will send."""

    exit_code = ExitCode.STALLED


class Interrupted(RunFailed):
    """A signal ended the run; the exit code is the shell's 128 + the signal's number."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(
        self, message: str, run_dir: str | None = None, code: ExitCode = ExitCode.INTERRUPTED
    ) -> None:
        super().__init__(message, run_dir)
        self.exit_code = code


class ComparisonFailed(RunFailed):
    """Both runs finished, but a measure is outside its tolerance, or there was nothing to
    compare (no output of the app could be lined up): neither may read as a pass."""

    exit_code = ExitCode.COMPARISON


class OutputTooLarge(SiteFailed):
    """A site's output (or a copy of it) is larger than its byte limit; copying stopped."""

    exit_code = ExitCode.SITE_FAILED
