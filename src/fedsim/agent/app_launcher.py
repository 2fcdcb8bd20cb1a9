"""Start a FeatureCloud app's main.py, optionally with the engine's fixed sleeps shortened.

Runs under the app's own interpreter, so it uses the standard library only. Shortening the
waits changes when things happen, never what is computed: the engine's sleeps only pace
its polling of queues that the agent drains quickly.
"""

import importlib
import os
import runpy
import sys
import time

SHORT_WAITS = {"DATA_POLL_INTERVAL": 0.01, "TRANSITION_WAIT": 0.01, "TERMINAL_WAIT": 0.2}
SETUP_WAIT = 0.01
"""What the controller's ``/setup`` handler sleeps instead of its 1 s before it answers: the
agent waits for that answer, so the sleep paces nothing (a hundred sites paid it in turn)."""
SITE_ENV = "/run/fedsim-app/site.env"
"""The site's own secrets, when it has an env file: put into the app's environment."""


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return inner.encode().decode("unicode_escape") if value[0] == '"' else inner
    return value.split(" #", 1)[0].rstrip()


def load_site_env(path: str = SITE_ENV) -> None:
    """``KEY=VALUE`` lines as in a ``.env`` file (``export``, quotes and comments allowed);
    read here, inside the app's sandbox, so that fedsim itself never reads the values."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ[key.strip()] = _unquote(value)


ENGINES = ("FeatureCloud.app.engine.app", "engine.app")
"""Where an app's engine lives: the pip package, or a copy the app carries as
``engine/app.py`` (FeatureCloud's app template and several published apps do)."""
CONTROLLERS = ("FeatureCloud.app.api.http_ctrl", "api.http_ctrl")
"""Where an app's controller API lives (``api/http_ctrl.py`` in a vendored copy)."""
PACKAGE = "FeatureCloud."


class _ShortSleeps:
    """The ``time`` module as a controller module sees it, with its sleeps cut to
    ``SETUP_WAIT``; everything else is the module's own."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def sleep(self, seconds):
        self._module.sleep(min(seconds, SETUP_WAIT))


def _importable(app_dir, names):
    """Those of ``names`` that import: the pip package's module, and a vendored copy only
    where the app carries its file (a bare ``engine.app`` could be anything on the path)."""
    for name in names:
        vendored = os.path.join(app_dir, *name.split(".")) + ".py"
        if not name.startswith(PACKAGE) and not os.path.isfile(vendored):
            continue
        try:
            yield importlib.import_module(name)
        except ImportError:
            continue


def shorten_waits(app_dir: str) -> None:
    """Lower the waits of every engine the app may use; a vendored copy has the same module
    constants. Imported before main.py runs, so that main.py gets the patched module."""
    found = False
    for engine in _importable(app_dir, ENGINES):
        found = True
        for name, value in SHORT_WAITS.items():
            if hasattr(engine, name):
                setattr(engine, name, value)
    for controller in _importable(app_dir, CONTROLLERS):
        if getattr(controller, "time", None) is time:
            controller.time = _ShortSleeps(time)
    if not found:
        print("fedsim: no FeatureCloud engine in this app; waits left as they are", file=sys.stderr)


def main() -> None:
    app_dir = os.getcwd()
    # as `python main.py` would have it: the app's folder first, and not fedsim's agent folder
    # (where this launcher lives), whose modules must not shadow the app's imports
    sys.path[0] = app_dir
    load_site_env()
    if os.environ.get("FEDSIM_SHORTEN_WAITS") == "1":
        shorten_waits(app_dir)
    sys.argv = [os.path.join(app_dir, "main.py")]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
