"""fedsim as an ordinary user, started from a root session: the hostile-app tests and
``bench/bench_scale.py --user`` compare such runs with root's."""

from __future__ import annotations

import os
from pathlib import Path

TEST_UID = 2_099_000_123
"""The ordinary user of the user-mode runs: far from any real account."""


def as_ordinary_user(tmp_path: Path, app_env: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix running fedsim as TEST_UID. fedsim's Python and the built app
    environment live under /root (mode 0700): a private mount namespace makes them
    reachable for this user without changing anything on the host."""
    stash = tmp_path / "root-stash"
    cache = tmp_path / "cache"
    (cache / "envs" / app_env.name).mkdir(parents=True)
    stash.mkdir()
    script = f"""
set -e
mount --make-rprivate /
mount --bind {app_env} {cache / "envs" / app_env.name}
mount --bind /root {stash}
mount -t tmpfs -o mode=0755 tmpfs /root
mkdir -p /root/.pyenv
mount --bind {stash}/.pyenv /root/.pyenv
exec setpriv --reuid={TEST_UID} --regid={TEST_UID} --clear-groups -- "$@"
"""
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path != stash and stash not in path.parents:
            os.lchown(path, TEST_UID, TEST_UID)
    return ["unshare", "--mount", "--", "sh", "-c", script, "sh"], {
        "FEDSIM_CACHE_DIR": str(cache),
        "HOME": str(tmp_path),
    }
