"""Drive featurecloud.ai and each participant's FeatureCloud controller over HTTP, headlessly.

Checked against local stand-ins of both APIs only (tests/fc_standin.py); the real site has no
published contract, so every answer is checked and a missing field is an error naming the
call. Layers, each in its own module:

    errors       ApiError (call, status, what was missing), Throttled, ProjectTimeout, ...
    http         one httpx client per user: User-Agent, rate limit, back-off on 429/403
    credentials  a user's own .env (mode 0600) read into os.environ, then os.getenv
    website      login, token refresh, app store, projects, tokens
    controller   the participant's own controller: ping, upload, finalise, runs, downloads
    roles        Coordinator and Participant: each has only the operations its role may do
    site_setup   at a site: Docker, the featurecloud CLI and the website checked, the
                 site's FeatureCloud controller started (``fedsim fc controller``)
    site_provision  an SSH site provisioned: website and registry reached (``reach``, run
                 there), Docker installed when missing, the CLI in an environment of its own
    client_sites where each participant's ``fedsim fc`` runs: this machine, or its SSH host
    platform     ``platform = "featurecloud"``: the whole order across a config's sites
"""

from fedsim.featurecloud.credentials import Credentials
from fedsim.featurecloud.errors import ApiError, ProjectEnded, ProjectTimeout, Throttled
from fedsim.featurecloud.roles import Coordinator, Participant, open_role

__all__ = [
    "ApiError",
    "Coordinator",
    "Credentials",
    "Participant",
    "ProjectEnded",
    "ProjectTimeout",
    "Throttled",
    "open_role",
]
