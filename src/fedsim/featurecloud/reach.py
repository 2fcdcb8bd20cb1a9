"""Run AT a site (``python -m fedsim.featurecloud.reach URL...``): which of the addresses the
FeatureCloud platform needs this machine cannot reach.

Any HTTP answer counts as reached (a registry answers 401 to strangers, a website 404 to
``HEAD /``); only a connection that fails or hangs does not. It goes to exactly the URLs it
is given (the config's ``[featurecloud]`` website and registry), nothing else. Standard
library only, and no proxy settings honoured but the site's own environment's.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT = 10.0
"""Seconds for one address: a firewall that drops packets shows as a timeout."""


def unreachable(urls: list[str], timeout: float = TIMEOUT) -> dict[str, str]:
    """Each address this machine cannot reach, with why."""
    failed = {}
    for url in urls:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "fedsim"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # an answer: the address is reached
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            failed[url] = str(reason)
    return failed


def main(urls: list[str]) -> int:
    failed = unreachable(urls)
    for url, reason in failed.items():
        print(f"{url} ({reason})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
