"""Shortening the engine's waits changes when things happen, never what is computed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedsim.agent.app_launcher import SHORT_WAITS
from tests.conftest import BEHAVE_APP, ROOT, fedsim, run_dir_of, write_run


@pytest.mark.slow
def test_shortened_waits_give_the_same_outputs_faster(tmp_path: Path) -> None:
    outputs = {}
    durations = {}
    for shorten in (True, False):
        workdir = tmp_path / f"shorten-{shorten}"
        shutil.copytree(ROOT / "examples" / "mean", workdir)
        config = workdir / "fedsim.toml"
        config.write_text(
            config.read_text()
            .replace('"../../apps/mean"', f'"{ROOT / "apps" / "mean"}"')
            .replace("shorten_waits = true", f"shorten_waits = {str(shorten).lower()}")
        )
        result = fedsim("run", str(config), cwd=config.parent)
        assert result.returncode == 0, result.stderr
        run_dir = run_dir_of(result)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["shorten_waits"] is shorten
        durations[shorten] = summary["duration_s"]
        outputs[shorten] = {
            p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted((run_dir / "sites").glob("*/output/*"))
        }
    assert len(outputs[True]) == 3
    assert outputs[True] == outputs[False]
    # the real engine sleeps 10 s before it reports finished; the shortened one does not
    assert durations[True] + 8 < durations[False], durations


def vendored_engine_app(dest: Path) -> Path:
    """The behave app as FeatureCloud's template lays it out: the engine and its controller
    API copied into the app (``engine/app.py``, ``api/http_ctrl.py``), not imported from the
    FeatureCloud package. The copies come from the package in the app's own environment."""
    from fedsim.appenv import ensure_app_env

    package = next(ensure_app_env(BEHAVE_APP).glob("lib/python*/site-packages/FeatureCloud"))
    shutil.copytree(BEHAVE_APP, dest)
    for source, target in (("app/engine/app.py", "engine"), ("app/api/http_ctrl.py", "api")):
        (dest / target).mkdir()
        text = (package / source).read_text().replace("FeatureCloud.app.engine.app", "engine.app")
        (dest / target / Path(source).name).write_text(text)
    for name in ("main.py", "states.py"):
        path = dest / name
        text = path.read_text().replace("FeatureCloud.app.engine.app", "engine.app")
        path.write_text(text.replace("FeatureCloud.app.api.http_ctrl", "api.http_ctrl"))
    main = dest / "main.py"  # made to record the waits the app really runs with
    main.write_text(main.read_text().replace('if __name__ == "__main__":', RECORD_WAITS, 1))
    return dest


RECORD_WAITS = f"""
import json as _json
import time as _time
import api.http_ctrl as _ctrl
import engine.app as _engine

_waits = {{name: getattr(_engine, name) for name in {sorted(SHORT_WAITS)!r}}}
_before = _time.monotonic()
_ctrl.time.sleep(1)  # what its /setup handler sleeps before it answers
_waits["setup_sleep"] = _time.monotonic() - _before
with open("/mnt/output/waits.json", "w") as _out:
    _json.dump(_waits, _out)

if __name__ == "__main__":"""


def test_waits_are_shortened_in_a_vendored_engine(tmp_path: Path) -> None:
    app = vendored_engine_app(tmp_path / "vendored")
    assert "from engine.app import" in (app / "states.py").read_text()
    sites = {"hub": {"behave": {"value": 1}}, "clinic": {"behave": {"value": 2}}}
    result = fedsim("run", str(write_run(tmp_path, app, sites)))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    # what the vendored engine's waits were while the app ran (its real TERMINAL_WAIT is 10 s)
    waits = json.loads((run_dir / "sites" / "hub" / "output" / "waits.json").read_text())
    assert waits.pop("setup_sleep") < 0.5  # the controller's 1 s before /setup answers
    assert waits == SHORT_WAITS
    assert "no FeatureCloud engine" not in (run_dir / "fedsim.log").read_text()
    assert json.loads((run_dir / "sites" / "hub" / "output" / "sum.json").read_text()) == {
        "sum": 3.0
    }


WAITED = 3.0
"""How long the coordinator thinks before it gathers: its participants wait that long."""
ENGINE_DATA_CHECK = 0.1
"""How often FeatureCloud's engine looks for incoming data (its ``DATA_POLL_INTERVAL``)."""


def test_a_site_waiting_for_data_looks_for_it_rarely_and_still_gets_it(tmp_path: Path) -> None:
    sites = {
        "hub": {"behave": {"value": 1, "idle": WAITED}},
        "clinic": {"behave": {"value": 2, "await_cost": True}},
        "lab": {"behave": {"value": 3, "await_cost": True}},
    }
    result = fedsim("run", str(write_run(tmp_path, BEHAVE_APP, sites)))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    for site in ("clinic", "lab"):
        output = run_dir / "sites" / site / "output"
        assert json.loads((output / "sum.json").read_text()) == {"sum": 6.0}
        cost = json.loads((output / "await.json").read_text())
        print(f"{site}: {cost}")
        assert cost["wall_s"] > WAITED - 1  # it did wait for the coordinator
        # no more often than the engine's own check (every 0.1 s; woken by the arrival, it
        # looks once a second), not every 10 ms: each look cost this machine about 0.1 ms of
        # CPU, 7 ms a second for every site that waits
        looks = cost["wall_s"] / ENGINE_DATA_CHECK
        assert cost["checks"] <= looks, cost
