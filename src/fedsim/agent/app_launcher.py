"""Start a FeatureCloud app's main.py, optionally with the engine's fixed sleeps shortened.

Runs under the app's own interpreter, so it uses the standard library only. Shortening the
waits changes when things happen, never what is computed: the engine's sleeps only pace
its polling of queues that the agent drains quickly.
"""

import os
import runpy
import sys

SHORT_WAITS = {"DATA_POLL_INTERVAL": 0.01, "TRANSITION_WAIT": 0.01, "TERMINAL_WAIT": 0.2}
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


def main() -> None:
    app_dir = os.getcwd()
    # as `python main.py` would have it: the app's folder first, and not fedsim's agent folder
    # (where this launcher lives), whose modules must not shadow the app's imports
    sys.path[0] = app_dir
    load_site_env()
    if os.environ.get("FEDSIM_SHORTEN_WAITS") == "1":
        try:
            import FeatureCloud.app.engine.app as engine
        except ImportError:
            print(
                "fedsim: no FeatureCloud engine in this app; waits left as they are",
                file=sys.stderr,
            )
        else:
            for name, value in SHORT_WAITS.items():
                if hasattr(engine, name):
                    setattr(engine, name, value)
    sys.argv = [os.path.join(app_dir, "main.py")]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
