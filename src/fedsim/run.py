"""One run: reconcile the validated config into running sites, watch them, record everything.

config -> run directory -> for each step (one app, or a workflow's apps): app environment,
relay, sites (inputs, agents), watch, stop, collect -> traffic.csv, versions.json,
summary.json.

Whatever happens after the run directory exists (a failing site, a timeout, a stall, Ctrl-C,
SIGTERM, SIGHUP), the ``finally`` paths stop every site and write the record, shielded from
further signals, so nothing is lost or left running.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fedsim
from fedsim.appenv import ensure_app_env, env_packages, env_python_version
from fedsim.config import RunConfig, StepConfig
from fedsim.errors import (
    FedsimError,
    Interrupted,
    RunFailed,
    RunStalled,
    RunTimeout,
    SiteFailed,
)
from fedsim.logs import (
    FIELD_SEPARATOR,
    counted,
    get_logger,
    parse_site_line,
    run_log_file,
    site_logger,
)
from fedsim.progress import ProgressDisplay, SiteRow, Timeline
from fedsim.pythons import find_python
from fedsim.relay.faults import Fault, FaultPlan
from fedsim.relay.network import NetworkModel
from fedsim.relay.routing import Routing
from fedsim.relay.server import RelayServer, TlsListen
from fedsim.relay.state import RelayState, SiteTraffic
from fedsim.relay.tls import RunCA, ServerCertificate
from fedsim.rundir import RunDir, directory_digest, iso, new_run_id
from fedsim.safefiles import Skipped, copy_tree
from fedsim.sites.applines import with_host_path
from fedsim.sites.base import (
    AgentLaunch,
    AppBundle,
    Placement,
    RelayTls,
    RunningSite,
    SiteStep,
    relay_socket_in,
)
from fedsim.sites.factory import make_placements
from fedsim.sites.group import SiteGroup
from fedsim.stopping import Stopper, StopSignal

log = get_logger("run")
WATCH_INTERVAL = 0.05
"""How often a step's sites are looked at, at least; each look costs in proportion to the
number of sites, so a large run looks less often (``watch_interval``)."""
PARTICIPANT_GRACE = 10.0
"""After the coordinator finishes, participants get this long to finish on their own."""
LOG_TAIL_LINES = 20
SUMMARY_INTERVAL = 1.0
"""While a step runs, ``summary.json`` is rewritten when a site's state changed, at most this
often: a hundred sites finishing together would each rewrite it whole (each rewrite costs
in proportion to the number of sites)."""
STARTING_AT_ONCE = max(4, 2 * (os.cpu_count() or 1))
"""Sites whose apps start at the same time (spawned, not yet answering). Starting an app
imports its libraries, which is CPU-bound: a hundred at once on two cores would each take
minutes and reach the agent's start-up timeout; a few at a time finish as soon, in total."""


def watch_interval(sites: int) -> float:
    """``WATCH_INTERVAL`` up to 100 sites, then growing with them to 0.25 s at 500 (a site's
    end is still seen well within a second): the watch stays a small part of a core."""
    return min(0.5, max(WATCH_INTERVAL, sites / 2000))


def agent_launch(config: RunConfig, site: str) -> AgentLaunch:
    """What the agent of ``site`` is told, the same at every step and wherever it lives."""
    return AgentLaunch(
        site=site,
        clients=tuple(s.name for s in config.sites),
        coordinator=config.coordinator.name,
        poll_interval=config.poll_interval,
        shorten_waits=config.shorten_waits,
        seed=config.seed,
    )


@dataclass
class SiteRecord:
    """One site in one step: its running agent and app, its log, its fate."""

    name: str
    coordinator: bool
    output_dir: Path
    log_paths: tuple[Path, ...]
    running: RunningSite | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    status: str = "pending"
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    skipped_outputs: list[Skipped] = field(default_factory=list)
    app_dir: Path | None = None
    """The app's folder on this machine: its tracebacks name files there, not in /app."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_line(self, line: str, at: float | None = None) -> None:
        """``at``: when the site printed it, if its placement knows (a remote site's clock,
        corrected); else now."""
        component, level, message = parse_site_line(line)
        if component == "app" and self.app_dir is not None:
            message = with_host_path(message, self.app_dir)
        site_logger().log(level, "%s", message, extra={"site": self.name, "component": component})
        with self.lock:
            self.tail.append(f"{component}: {message}")
            # appended line by line: a site's log is complete on disk whenever it is read
            for path in self.log_paths:
                with path.open("a", encoding="utf-8") as log_file:
                    log_file.write(f"{iso(at or time.time())} {component:<6} {message}\n")

    def tail_text(self) -> str:
        with self.lock:
            return "\n".join(f"    {line}" for line in self.tail)


@dataclass
class StepRecord:
    index: int
    config: StepConfig
    label: str
    env: Path | None = None
    relay_state: RelayState | None = None
    sites: dict[str, SiteRecord] = field(default_factory=dict)
    status: str = "pending"
    started: float | None = None
    ended: float | None = None


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


class Run:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.run_id = new_run_id(config.name)
        self.run_dir = RunDir.create(config.output_dir, self.run_id)
        workflow = config.workflow
        self.steps = [
            StepRecord(i, step, f"{i}-{step.app.name}" if len(workflow) > 1 else "")
            for i, step in enumerate(workflow, start=1)
        ]
        self.started = time.time()
        self.ended: float | None = None
        self.status = "running"
        self.error: str | None = None
        self._sites: SiteGroup | None = None
        self._relay_tls: tuple[RunCA, ServerCertificate] | None = None
        self._cancel_start = threading.Event()
        self._stopper = Stopper()
        self.timeline = Timeline()

    # --- the record ------------------------------------------------------------------------

    def _site_summary(
        self,
        name: str,
        traffic: dict[str, list[int]],
        statuses: dict[int, dict[str, dict[str, Any]]],
    ) -> dict[str, Any]:
        """``traffic``: site -> [messages sent, bytes sent, messages received, bytes received];
        ``statuses``: step -> site -> its app's last reported state."""
        placement = self._sites.placements.get(name) if self._sites is not None else None
        where = {"placement": placement.describe() if placement is not None else {}}
        ran = [s for s in self.steps if name in s.sites]
        sent_n, sent_b, received_n, received_b = traffic.get(name, [0, 0, 0, 0])
        counts = {
            "messages_sent": sent_n,
            "bytes_sent": sent_b,
            "messages_received": received_n,
            "bytes_received": received_b,
        }
        if not ran:  # the run stopped before this site was started
            return {
                "status": "pending",
                "coordinator": name == self.config.coordinator.name,
                "exit_code": None,
                "started": None,
                "ended": None,
                **counts,
                "app": {},
                "memory": {},
                "skipped_outputs": [],
                **where,
            }
        last = ran[-1].sites[name]
        state = ran[-1].relay_state
        return {
            "status": last.status,
            "coordinator": last.coordinator,
            "exit_code": last.exit_code,
            "started": iso(ran[0].sites[name].started),
            "ended": iso(last.ended),
            **counts,
            "app": statuses.get(ran[-1].index, {}).get(name, {}),
            "memory": {
                **(state.memory_report(name) if state else {}),
                **(last.running.memory() if last.running is not None else {}),
            },
            "skipped_outputs": [
                {"step": s.index, "path": k.path, "reason": k.reason}
                for s in ran
                for k in s.sites[name].skipped_outputs
            ],
            **where,
        }

    def summary(self) -> dict[str, Any]:
        # the relay's running totals: the cost of a summary does not grow with the traffic
        per_site: dict[str, list[int]] = {}
        statuses: dict[int, dict[str, dict[str, Any]]] = {}
        for step in self.steps:
            if step.relay_state is None:
                continue
            statuses[step.index] = step.relay_state.site_statuses()
            for site, t in step.relay_state.site_traffic().items():
                totals = per_site.setdefault(site, [0, 0, 0, 0])
                for i, n in enumerate((t.sent, t.bytes_sent, t.received, t.bytes_received)):
                    totals[i] += n
        return {
            "run_id": self.run_id,
            "name": self.config.name,
            "status": self.status,
            "error": self.error,
            "started": iso(self.started),
            "ended": iso(self.ended),
            "duration_s": None if self.ended is None else round(self.ended - self.started, 3),
            "app": str(self.steps[-1].config.app),
            "seed": self.config.seed,
            "shorten_waits": self.config.shorten_waits,
            "fedsim_version": fedsim.__version__,
            "messages": sum(t[0] for t in per_site.values()),
            "bytes": sum(t[1] for t in per_site.values()),
            "steps": [
                {
                    "step": s.index,
                    "app": str(s.config.app),
                    "status": s.status,
                    "started": iso(s.started),
                    "ended": iso(s.ended),
                    "app_env": None if s.env is None else str(s.env),
                    "sites": {name: rec.status for name, rec in s.sites.items()},
                }
                for s in self.steps
            ],
            "sites": {
                s.name: self._site_summary(s.name, per_site, statuses) for s in self.config.sites
            },
            "faults": [
                {"step": s.index, **event}
                for s in self.steps
                if s.relay_state is not None and s.relay_state.faults is not None
                for event in s.relay_state.faults.report()
            ],
        }

    def _write_versions(self) -> None:
        """What produced this run, so that it can be reproduced (with the recorded seed)."""
        versions = {
            "fedsim": fedsim.__version__,
            "fedsim_python": sys.version,
            "seed": self.config.seed,
            "steps": [
                {
                    "app": str(s.config.app),
                    "app_sha256": directory_digest(s.config.app),
                    "python": None if s.env is None else env_python_version(s.env),
                    "packages": [] if s.env is None else env_packages(s.env),
                }
                for s in self.steps
            ],
        }
        (self.run_dir.path / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")

    # --- the run ---------------------------------------------------------------------------

    def execute(self) -> RunResult:
        with self._stopper.installed():
            return self._execute()

    def _execute(self) -> RunResult:
        self.run_dir.write_config(self.config.public_dict())
        self.run_dir.write_summary(self.summary())
        with run_log_file(self.run_dir.log_path):
            apps = " -> ".join(s.config.app.name for s in self.steps)
            log.info(
                "run %s: %s, %s, record in %s",
                self.run_id,
                counted(len(self.config.sites), "site"),
                apps,
                self.run_dir.path,
            )
            private = Path(tempfile.mkdtemp(prefix="fedsim-"))  # sockets, tokens: not recorded
            try:
                self._sites = make_placements(self.config, private, self.run_id)
                if self._sites.remote:  # sites elsewhere reach the relay over TLS
                    ca = RunCA.create(
                        private, self.run_id, dt.timedelta(seconds=self.config.timeout)
                    )
                    self._relay_tls = (ca, ca.issue_server(private))
                for step in self.steps:  # all environments first: a bad one fails fast
                    python = step.config.python
                    step.env = ensure_app_env(
                        step.config.app,
                        python=None if python is None else str(find_python(python)),
                        requirements=step.config.requirements,
                    )
                self._write_versions()
                self._open_sites(self._sites)
                for step in self.steps:
                    self._run_step(step, private)
                self.status = "finished"
            except (KeyboardInterrupt, StopSignal) as exc:
                self._stopper.shield()
                stop = exc if isinstance(exc, StopSignal) else StopSignal(signal.SIGINT)
                where = (
                    "interrupted (Ctrl-C)"
                    if stop.signum == signal.SIGINT
                    else f"ended by {stop.describe()}"
                )
                error = Interrupted(f"{where}; every site was stopped", code=stop.exit_code)
                self._fail(error, exc)
            except RunFailed as exc:
                self._stopper.shield()
                self._fail(exc, exc)
            except BaseException as exc:
                self._stopper.shield()
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
                if isinstance(exc, FedsimError):
                    exc.run_dir = str(self.run_dir.path)
                raise
            finally:
                self._stopper.shield()  # the record is written whatever arrives now
                if self._sites is not None:
                    self._sites.close()
                self.ended = time.time()
                self.run_dir.write_traffic(
                    (s.index, s.relay_state.snapshot()[0]) for s in self.steps if s.relay_state
                )
                self.run_dir.write_states(self.timeline.changes)
                self.run_dir.write_summary(self.summary())
                shutil.rmtree(private, ignore_errors=True)
                log.info("run %s %s in %.1f s", self.run_id, self.status, self.ended - self.started)
        return RunResult(self.run_dir.path, self.summary())

    def _fail(self, error: RunFailed, cause: BaseException) -> None:
        self.status, self.error = "failed", str(error)
        log.error("%s", error)
        error.logged = True
        error.run_dir = str(self.run_dir.path)
        raise error from (None if cause is error else cause)

    def _open_sites(self, sites: SiteGroup) -> None:
        """Every site once for the whole run, all at once; then each step's app at each."""
        sites.open()
        apps = list(dict.fromkeys(self._app_bundle(s) for s in self.steps))

        def prepare(_: str, placement: Placement) -> None:
            for app in apps:
                placement.prepare(app)

        sites.each("prepare the app", prepare)

    @staticmethod
    def _app_bundle(step: StepRecord) -> AppBundle:
        assert step.env is not None
        return AppBundle(step.config.app, step.env)

    def _run_step(self, step: StepRecord, private: Path) -> None:
        step.status, step.started = "running", time.time()
        if step.label:
            log.info("step %d: %s", step.index, step.config.app.name)
        relay: RelayServer | None = None
        title = f"step {step.index}: {step.config.app.name}" if step.label else None
        with ProgressDisplay(lambda: self._rows(step), step.index, self.timeline, title) as display:
            try:
                relay = self._start_relay(step, private)
                self._start_sites(step, relay)
                self._watch(step, display)
                step.status = "finished"
            except BaseException:
                self._stopper.shield()  # from here on the run only stops and records
                self._cancel_start.set()  # sites still waiting to start never will
                step.status = "failed"
                raise
            finally:
                with self._stopper.deferred():
                    self._stop_and_collect(step, relay)
                    step.ended = time.time()

    @staticmethod
    def _rows(step: StepRecord) -> list[SiteRow]:
        """The step's sites as the progress display shows them."""
        state = step.relay_state
        statuses = state.site_statuses() if state else {}
        traffic = state.site_traffic() if state else {}
        return [
            SiteRow(
                name,
                rec.coordinator,
                rec.status,
                statuses.get(name, {}),
                traffic.get(name, SiteTraffic()),
            )
            for name, rec in step.sites.items()
        ]

    def _start_relay(self, step: StepRecord, private: Path) -> RelayServer:
        names = tuple(s.name for s in self.config.sites)
        tokens = {name: secrets.token_urlsafe(32) for name in names}
        capture = None
        if self.config.capture_payloads:
            capture = self.run_dir.path / "messages" / (step.label or "")
        links = self.config.links()
        step.relay_state = RelayState(
            Routing(names, self.config.coordinator.name),
            tokens,
            capture_dir=capture,
            network=NetworkModel(links, self.config.seed) if links else None,
        )
        tls = None
        if self._relay_tls is not None:
            cert = self._relay_tls[1]
            assert self._sites is not None
            host, port = self._sites.relay_bind
            tls = TlsListen(host, port, cert.cert_file, cert.key_file)
        planned = [f for f in self.config.faults if f.step == step.index]
        if planned:
            step.relay_state.faults = FaultPlan(
                [
                    Fault(
                        f.site, f.action, f.at, f.memo, f.after_messages, f.duration, f.count or 1
                    )
                    for f in planned
                ],
                time.time(),
                list(names),
                step.relay_state.site_statuses,
            )
        socket_path = relay_socket_in(private, step.index)
        socket_path.parent.mkdir(mode=0o700, exist_ok=True)
        relay = RelayServer(step.relay_state, socket_path, tls=tls)
        relay.start()
        relay.socket_path.chmod(0o666)  # agents run as their own uids; the folder is private
        log.info("relay listening on %s", relay.socket_path, extra={"component": "relay"})
        return relay

    def _step_inputs(self, step: StepRecord, site: str) -> tuple[list[Path], list[Path]]:
        """(inputs, files that override inputs of the same name) of a site in a step."""
        if step.index == 1:
            site_inputs = next(s.inputs for s in self.config.sites if s.name == site)
            return [*site_inputs, *step.config.inputs], []
        previous = self.steps[step.index - 2]
        return [self.run_dir.step_site_dir(site, previous.label) / "output"], step.config.inputs

    def _start_sites(self, step: StepRecord, relay: RelayServer) -> None:
        """Inputs in place at every site, all at once; then every site started, at most
        ``STARTING_AT_ONCE`` of them starting up at a time."""
        assert step.relay_state is not None and step.env is not None
        assert self._sites is not None and relay.socket_path is not None
        relay_tls = None
        if self._relay_tls is not None and relay.port is not None and relay.tls is not None:
            relay_tls = RelayTls(relay.port, self._relay_tls[0].cert_pem, relay.tls.host)
        tokens = step.relay_state.tokens
        app = self._app_bundle(step)
        configs = {cfg.name: cfg for cfg in self.config.sites}
        for cfg in self.config.sites:
            step_dir = self.run_dir.step_site_dir(cfg.name, step.label)
            log_paths = (step_dir / "site.log",)
            if step.label:
                log_paths += (self.run_dir.site_dir(cfg.name) / "site.log",)
            step_dir.mkdir(parents=True, exist_ok=True)
            rec = SiteRecord(
                cfg.name, cfg.coordinator, step_dir / "output", log_paths, app_dir=step.config.app
            )
            step.sites[cfg.name] = rec

        def put_inputs(name: str, placement: Placement) -> None:
            placement.put_inputs(*self._step_inputs(step, name))

        starting = threading.BoundedSemaphore(STARTING_AT_ONCE)

        def spawn(name: str, placement: Placement) -> None:
            with starting:
                if not self._cancel_start.is_set():
                    start(name, placement)
                    self._await_first_state(step, name)

        def start(name: str, placement: Placement) -> None:
            rec = step.sites[name]
            site_step = SiteStep(
                app=app,
                relay_socket=relay.socket_path,
                output_dir=rec.output_dir,
                token=tokens[name],
                env_file=configs[name].env_file,
                relay_tls=relay_tls,
            )
            rec.running = placement.spawn(agent_launch(self.config, name), site_step, rec.on_line)
            rec.status, rec.started = "running", time.time()
            log.info("site %s started%s", name, " (coordinator)" if rec.coordinator else "")

        self._sites.each("take its inputs", put_inputs)
        self._sites.each("start", spawn)
        self.run_dir.write_summary(self.summary())

    def _await_first_state(self, step: StepRecord, name: str) -> None:
        """Until the site's app answers (its agent reports a first state), it has ended, or
        the run is being stopped: a start-up slot is held that long."""
        assert step.relay_state is not None
        rec = step.sites[name]
        deadline = time.monotonic() + agent_launch(self.config, name).startup_timeout + 10
        while time.monotonic() < deadline and not self._cancel_start.is_set():
            if step.relay_state.has_reported(name, wait=0.1):
                return
            if rec.running is None or rec.running.poll() is not None:
                return

    def _watch(self, step: StepRecord, display: ProgressDisplay) -> None:
        deadline = self.started + self.config.timeout
        coordinator = step.sites[self.config.coordinator.name]
        coordinator_done: float | None = None
        last_exit = time.time()
        if step.relay_state is not None and step.relay_state.faults is not None:
            step.relay_state.faults.start_clock(last_exit)
        changed, written = False, 0.0
        interval = watch_interval(len(step.sites))
        while True:
            now = time.time()
            for rec in step.sites.values():
                if rec.status != "running":
                    continue
                assert rec.running is not None
                code = rec.running.poll()
                if code is None:
                    continue
                rec.exit_code, rec.ended = code, now
                if code != 0:
                    rec.status = "failed"
                    time.sleep(0.2)  # let the reader hand over the site's last lines
                    where = f" in step {step.index} ({step.config.app.name})" if step.label else ""
                    why = rec.running.failure() or f"exit code {code}"
                    raise SiteFailed(
                        f"site {rec.name} failed{where} ({why})\n"
                        f"last lines of its log:\n{rec.tail_text()}"
                    )
                rec.status = "finished"
                last_exit, changed = now, True
                log.info("site %s finished", rec.name)
            if changed and now - written >= SUMMARY_INTERVAL:
                self.run_dir.write_summary(self.summary())
                changed, written = False, now
            display.tick()
            self._check_violations(step)
            self._check_faults(step)
            running = [r for r in step.sites.values() if r.status == "running"]
            if not running:
                return
            if coordinator.status == "finished":
                # the run ends with the coordinator; some apps' participants never finish
                coordinator_done = coordinator_done or now
                if now - coordinator_done > PARTICIPANT_GRACE:
                    for rec in running:
                        log.warning(
                            "site %s had not finished %.0f s after the coordinator; stopping it",
                            rec.name,
                            PARTICIPANT_GRACE,
                        )
                        assert rec.running is not None
                        rec.running.stop()
                        rec.status, rec.ended = "stopped", time.time()
                    return
            else:  # once the coordinator is done, the participants' grace governs instead
                self._check_stall(step, now, last_exit)
            if now > deadline:
                names = ", ".join(r.name for r in running)
                raise RunTimeout(
                    f"timeout: the run took longer than {self.config.timeout:g} s "
                    f"(sites still running: {names})"
                )
            time.sleep(interval)

    def _check_violations(self, step: StepRecord) -> None:
        """A site whose agent sent the relay something malformed or forbidden fails, named:
        a well-behaved agent never does, so it is a fault at that site, not a hiccup."""
        if step.relay_state is None:
            return
        for site, message in step.relay_state.violations_snapshot():
            rec = step.sites.get(site)
            if rec is not None and rec.status == "running":
                rec.status, rec.ended = "failed", time.time()
                raise SiteFailed(
                    f"site {site} failed (the relay refused what it sent: {message})\n"
                    f"last lines of its log:\n{rec.tail_text()}"
                )

    def _check_faults(self, step: StepRecord) -> None:
        """Injected faults that fired: said, with what the others were doing; a crash stops
        its site, which fails the run as a real crash would."""
        plan = step.relay_state.faults if step.relay_state is not None else None
        if plan is None:
            return
        plan.tick()
        for fault in plan.newly_fired():
            others = "; ".join(f"{n}: {s!r}" for n, s in fault.others.items()) or "none"
            log.warning("%s; the others meanwhile: %s", fault.describe(), others)
            rec = step.sites.get(fault.site)
            if fault.action != "crash" or rec is None or rec.status != "running":
                continue
            assert rec.running is not None
            rec.running.stop()
            rec.status, rec.ended = "failed", time.time()
            raise SiteFailed(
                f"{fault.describe()}; the others meanwhile: {others}; "
                f"last lines of its log:\n{rec.tail_text()}"
            )

    def _check_stall(self, step: StepRecord, now: float, last_exit: float) -> None:
        """Raise RunStalled when nothing has happened for ``stall_timeout``: no site changed
        state, no message moved, no site ended. Counted from when every running site's app
        has reported a first state: starting an app has its own timeout in the agent."""
        assert step.relay_state is not None
        statuses = step.relay_state.site_statuses()
        running = [r for r in step.sites.values() if r.status == "running"]
        if any(r.name not in statuses for r in running):
            return
        quiet_since = max(step.relay_state.last_activity(), last_exit)
        if now - quiet_since <= self.config.stall_timeout:
            return
        raise RunStalled(self._stall_report(step, now, statuses))

    def _stall_report(
        self, step: StepRecord, now: float, statuses: dict[str, dict[str, Any]]
    ) -> str:
        """Per site: its state and for how long, the messages waiting for it, its last lines."""
        assert step.relay_state is not None
        waiting = step.relay_state.waiting()
        where = f" in step {step.index} ({step.config.app.name})" if step.label else ""
        lines = [
            f"stalled{where}: no site changed state and no message moved for "
            f"{self.config.stall_timeout:g} s"
        ]
        for rec in step.sites.values():
            status = statuses.get(rec.name, {})
            state = status.get("message") or status.get("state") or "no state reported"
            since = now - float(status.get("time", rec.started or now))
            role = " (coordinator)" if rec.coordinator else ""
            count = waiting.get(rec.name, 0)
            lines.append(
                f"  site {rec.name}{role}: {rec.status}, app state {state!r} for {since:.0f} s, "
                f"{count} message{'' if count == 1 else 's'} waiting for it; last lines:"
            )
            lines.append(rec.tail_text() or "    (none)")
        if len(step.sites) == 1:
            lines.append(
                "hint: a coordinator alone (a centralised run) that broadcasts without a memo "
                "and then awaits data waits for ever: the FeatureCloud engine files its own "
                "broadcast under the memo None but waits on GATHERROUND<n>. Give "
                "broadcast_data and await_data an explicit memo."
            )
        return "\n".join(lines)

    def _stop_and_collect(self, step: StepRecord, relay: RelayServer | None) -> None:
        """Every site stopped, then every site's outputs fetched: each for all sites at once
        (a site's stop waits for its processes to end; a hundred in turn add up)."""
        assert self._sites is not None
        now = time.time()

        def stop(name: str, _: Placement) -> None:
            rec = step.sites[name]
            assert rec.running is not None
            rec.running.stop()
            if rec.status == "running":
                rec.status, rec.ended = "stopped", now
                rec.exit_code = rec.running.poll()

        self._sites.each("stop", stop, [n for n, r in step.sites.items() if r.running is not None])
        if relay is not None:
            relay.stop()
        self._sites.each("hand over its outputs", lambda name, _: self._collect(step, name),
                         list(step.sites))  # fmt: skip
        self.run_dir.write_summary(self.summary())

    def _collect(self, step: StepRecord, name: str) -> None:
        """One site's outputs of the step into the run directory, what was skipped said."""
        assert self._sites is not None
        rec = step.sites[name]
        skipped: list[Skipped] = []
        if rec.running is not None:
            # the app wrote that folder: regular files and folders only, no link followed
            try:
                skipped += self._sites.placements[name].fetch_outputs(rec.output_dir)
            except FedsimError as exc:  # a site that is gone: the others are still fetched
                log.error("site %s: its outputs could not be fetched: %s", name, exc)
                skipped.append(Skipped(".", f"not fetched: {exc}"))
        rec.output_dir.mkdir(parents=True, exist_ok=True)
        if step.label:  # a workflow's result is its last step's output
            final = self.run_dir.site_dir(name) / "output"
            shutil.rmtree(final, ignore_errors=True)
            skipped += copy_tree(rec.output_dir, final)
        skipped += self.run_dir.zip_output(name)
        rec.skipped_outputs = skipped
        for item in skipped:
            message = f"skipped {item.path!r}: {item.reason}"  # repr: names may hold newlines
            rec.on_line(FIELD_SEPARATOR.join(("output", "WARNING", message)))


def run(config: RunConfig) -> RunResult:
    if config.platform == "featurecloud":
        from fedsim.featurecloud.platform import run_featurecloud

        path = run_featurecloud(config)
        return RunResult(path, RunDir(path).read_summary())
    return Run(config).execute()
