"""Start a FeatureCloud app's main.py, optionally with the engine's fixed sleeps shortened.

Runs under the app's own interpreter, so it uses the standard library only. Shortening the
waits changes when things happen, never what is computed: the engine's sleeps only pace
its polling of queues that the agent drains quickly.
"""

import functools
import importlib
import os
import runpy
import sys
import threading
import time

SHORT_WAITS = {"DATA_POLL_INTERVAL": 1.0, "TRANSITION_WAIT": 0.01, "TERMINAL_WAIT": 0.2}
"""The engine's waits, shortened; its wait for data is woken by each arrival
(``wake_on_arrival``), so its own check (every 0.1 s) is needed only for data that reaches the
queue some other way, and happens once a second: each wake-up costs about 0.1 ms of CPU, and a
few hundred sites waiting meant a core."""
UNWOKEN_DATA_POLL = 0.01
"""The data check of an engine whose wait cannot be woken (it lacks what ``wake_on_arrival``
hooks): polling is then the only way to see data soon, at about 7 ms of CPU a second for
every site that waits, which a few hundred waiting sites turn into cores."""
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


def wake_on_arrival(engine):
    """Make the engine's wait for data (``AppState.await_data``, which checks its queue every
    ``DATA_POLL_INTERVAL``) sleep until data arrives (``App.handle_incoming``, called by the
    controller) or the interval ends, so that a waiting site sees its data at once and costs
    next to nothing meanwhile. False, and nothing changed, where the engine lacks either or
    does not sleep through its module's ``sleep``."""
    app_class = getattr(engine, "App", None)
    state_class = getattr(engine, "AppState", None)
    handle = getattr(app_class, "handle_incoming", None)
    await_data = getattr(state_class, "await_data", None)
    if handle is None or await_data is None or getattr(engine, "sleep", None) is not time.sleep:
        return False
    arrived = threading.Event()
    waiting = threading.local()

    @functools.wraps(handle)
    def handle_incoming(self, *args, **kwargs):
        try:
            return handle(self, *args, **kwargs)
        finally:
            arrived.set()  # after the data is queued: whoever wakes finds it

    @functools.wraps(await_data)
    def awaiting(self, *args, **kwargs):
        waiting.depth = getattr(waiting, "depth", 0) + 1
        try:
            return await_data(self, *args, **kwargs)
        finally:
            waiting.depth -= 1

    def sleep(seconds):
        if not getattr(waiting, "depth", 0):
            time.sleep(seconds)  # the engine's other waits, as they were
            return
        arrived.wait(seconds)
        arrived.clear()  # before the engine looks again: a later arrival sets it anew

    app_class.handle_incoming = handle_incoming
    state_class.await_data = awaiting
    engine.sleep = sleep
    return True


def shorten_waits(app_dir: str) -> None:
    """Lower the waits of every engine the app may use; a vendored copy has the same module
    constants. Imported before main.py runs, so that main.py gets the patched module."""
    found = False
    for engine in _importable(app_dir, ENGINES):
        found = True
        for name, value in SHORT_WAITS.items():
            if hasattr(engine, name):
                setattr(engine, name, value)
        if hasattr(engine, "DATA_POLL_INTERVAL") and not wake_on_arrival(engine):
            engine.DATA_POLL_INTERVAL = UNWOKEN_DATA_POLL
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
