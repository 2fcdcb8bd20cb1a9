"""One user's featurecloud.ai login, from that user's own ``.env`` on that user's machine.

The file is read into this process's environment and the values taken with ``os.getenv``, as
the agent does for a site's secrets; a command runs as exactly one user, so no process ever
holds another participant's password. The file must be mode 0600, as every secrets file
fedsim uses. Neither the password nor any token is ever logged or shown: ``repr`` hides them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.agent.app_launcher import load_site_env
from fedsim.config import check_private_file
from fedsim.errors import ConfigError

USERNAME = "FEATURECLOUD_USERNAME"
PASSWORD = "FEATURECLOUD_PASSWORD"
WEBSITE_URL = "FEATURECLOUD_URL"
CONTROLLER_URL = "FEATURECLOUD_CONTROLLER_URL"
DEFAULT_WEBSITE = "https://featurecloud.ai"
DEFAULT_CONTROLLER = "http://localhost:8000"
"""Where ``featurecloud controller start`` makes the participant's controller listen."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    website: str = DEFAULT_WEBSITE
    controller: str = DEFAULT_CONTROLLER

    @classmethod
    def load(cls, env_file: Path) -> Credentials:
        """``FEATURECLOUD_USERNAME`` and ``FEATURECLOUD_PASSWORD`` (both needed),
        ``FEATURECLOUD_URL`` and ``FEATURECLOUD_CONTROLLER_URL`` (defaults: the website and
        ``http://localhost:8000``) from ``env_file``, or from the environment already set."""
        path = env_file.expanduser().resolve()
        try:
            check_private_file(path, "holds a featurecloud.ai login")
        except ValueError as exc:
            raise ConfigError(f"{env_file}: {exc}") from None
        load_site_env(str(path))
        missing = [name for name in (USERNAME, PASSWORD) if not os.getenv(name)]
        if missing:
            raise ConfigError(
                "\n".join(f"{env_file}: {name}: missing (the user's own login)" for name in missing)
            )
        return cls(
            username=os.getenv(USERNAME, ""),
            password=os.getenv(PASSWORD, ""),
            website=os.getenv(WEBSITE_URL) or DEFAULT_WEBSITE,
            controller=os.getenv(CONTROLLER_URL) or DEFAULT_CONTROLLER,
        )
