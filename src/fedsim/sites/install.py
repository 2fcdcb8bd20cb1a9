"""The script that makes a virtual environment from a shipped wheelhouse, at a remote site.

Under a folder ``W`` of the site: ``W/wheels/KEY`` is the wheelhouse as shipped, ``W/envs/KEY``
the environment made from it, complete only with its marker, so an interrupted install is
redone and a finished one never touched again. Installs take a lock in ``W``, so runs (and
sites sharing a host or a Dask worker) take turns. Nothing is downloaded (``pip --no-index``).
The same script runs over SSH (``provision.py``) and at a Dask worker (``dask_task.py``).
"""

from __future__ import annotations

import shlex

from fedsim.appenv import COMPLETE_MARKER
from fedsim.sites.wheelhouse import NO_DEPS_FILE, PIP_FILE, REQUIREMENTS_FILE

INSTALL_TIMEOUT = 900.0
NOT_COMPILED = "/tests?/"
"""Folders whose modules are not byte-compiled at install: packages' own test suites (a
third of numpy's and pandas' code), which no run imports. The sandbox keeps the environment
read-only, so what runs must be compiled here; pip would compile everything, which took 9.6
of the 13.6 s the mean app's environment took to install natively (7.7 s without the test
suites), and weighs more under a VM's software emulation. A file that does not compile
(Python 2 leftovers in some wheels) is skipped, as pip skips it."""
NO_PYTHON = 3
"""The install script's exit code when the site has no Python of the wanted version."""

_INSTALL = """set -eu
W={workdir}; KEY={key}; V={python}
ENV="$W/envs/$KEY"; WH="$W/wheels/$KEY"
mkdir -p "$W/envs"
exec 9>"$W/envs/.lock"
flock 9
if [ -f "$ENV/{marker}" ]; then echo present; exit 0; fi
PY=
for p in "python$V" python3; do
    if command -v "$p" >/dev/null 2>&1 &&
       [ "$("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$V" ]; then
        PY=$(command -v "$p"); break
    fi
done
if [ -z "$PY" ]; then
    echo "no Python $V (python$V or python3) on the PATH" >&2; exit {no_python}
fi
rm -rf "$ENV"
"$PY" -m venv --without-pip "$ENV"
PIP="$WH/$(cat "$WH/{pip_file}")/pip"
"$ENV/bin/python" "$PIP" install --no-index --find-links "$WH" --disable-pip-version-check \\
    --no-input -q --no-compile -r "$WH/{requirements}"
for wheel in $(cat "$WH/{no_deps}"); do
    "$ENV/bin/python" "$PIP" install --no-index --no-deps --disable-pip-version-check \\
        --no-input -q --no-compile "$WH/$wheel"
done
"$ENV/bin/python" -m compileall -q -x '{skip}' "$ENV/lib" >/dev/null || :
"$PY" -c 'import sys; print(sys.version.split()[0])' > "$ENV/{marker}"
echo installed
"""


def install_script(workdir: str, key: str, python: str) -> str:
    """The ``sh`` script that installs wheelhouse ``key`` (for Python ``python``, MAJOR.MINOR)
    under ``workdir``; it prints ``installed`` or ``present`` last, and exits ``NO_PYTHON``
    when the site has no such Python."""
    return _INSTALL.format(
        workdir=shlex.quote(workdir),
        key=shlex.quote(key),
        python=shlex.quote(python),
        marker=COMPLETE_MARKER,
        no_python=NO_PYTHON,
        pip_file=PIP_FILE,
        requirements=REQUIREMENTS_FILE,
        no_deps=NO_DEPS_FILE,
        skip=NOT_COMPILED,
    )
