"""One run: reconcile the validated config into running sites, watch them, record everything.

config -> run directory -> app environment -> relay -> sites (inputs, agents) -> watch ->
stop every site -> collect outputs and logs -> traffic.csv, summary.json.

Whatever happens after the run directory exists (a failing site, a timeout, Ctrl-C), the
``finally`` path stops every site and writes the record, so nothing is lost or left running.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fedsim
from fedsim.appenv import ensure_app_env, env_python
from fedsim.config import RunConfig
from fedsim.errors import Interrupted, RunFailed, RunTimeout, SiteFailed
from fedsim.logs import get_logger, parse_site_line, run_log_file, site_logger
from fedsim.relay import RelayServer, RelayState, Routing
from fedsim.rundir import RunDir, iso, new_run_id
from fedsim.sites.base import AgentLaunch, Site
from fedsim.sites.local import LocalSite
from fedsim.sites.sandbox import bwrap_path

log = get_logger("run")
WATCH_INTERVAL = 0.05
PARTICIPANT_GRACE = 10.0
"""After the coordinator finishes, participants get this long to finish on their own."""
LOG_TAIL_LINES = 20


@dataclass
class SiteRecord:
    name: str
    coordinator: bool
    site: Site
    log_path: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    status: str = "pending"
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_line(self, line: str) -> None:
        component, level, message = parse_site_line(line)
        site_logger().log(level, "%s", message, extra={"site": self.name, "component": component})
        with self.lock:
            self.tail.append(f"{component}: {message}")
            # appended line by line: a site's log is complete on disk whenever it is read
            with self.log_path.open("a", encoding="utf-8") as log_file:
                log_file.write(f"{iso(time.time())} {component:<6} {message}\n")

    def tail_text(self) -> str:
        with self.lock:
            return "\n".join(f"    {line}" for line in self.tail)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


class Run:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.run_id = new_run_id(config.name)
        self.run_dir = RunDir.create(config.output_dir, self.run_id)
        self.records: dict[str, SiteRecord] = {}
        self.started = time.time()
        self.ended: float | None = None
        self.status = "running"
        self.error: str | None = None
        self.relay_state: RelayState | None = None
        self.app_env: Path | None = None

    # --- the record ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        traffic, statuses = self.relay_state.snapshot() if self.relay_state else ([], {})
        sites: dict[str, Any] = {}
        for name, rec in self.records.items():
            sent = [t for t in traffic if t.sender == name]
            received = [t for t in traffic if t.receiver == name]
            sites[name] = {
                "status": rec.status,
                "coordinator": rec.coordinator,
                "exit_code": rec.exit_code,
                "started": iso(rec.started),
                "ended": iso(rec.ended),
                "messages_sent": len(sent),
                "bytes_sent": sum(t.bytes for t in sent),
                "messages_received": len(received),
                "bytes_received": sum(t.bytes for t in received),
                "app": statuses.get(name, {}),
                "memory": self.relay_state.memory_report(name) if self.relay_state else {},
            }
        return {
            "run_id": self.run_id,
            "name": self.config.name,
            "status": self.status,
            "error": self.error,
            "started": iso(self.started),
            "ended": iso(self.ended),
            "duration_s": None if self.ended is None else round(self.ended - self.started, 3),
            "app": str(self.config.app),
            "app_env": None if self.app_env is None else str(self.app_env),
            "seed": self.config.seed,
            "shorten_waits": self.config.shorten_waits,
            "fedsim_version": fedsim.__version__,
            "messages": len(traffic),
            "bytes": sum(t.bytes for t in traffic),
            "sites": sites,
        }

    # --- the run ---------------------------------------------------------------------------

    def execute(self) -> RunResult:
        self.run_dir.write_config(self.config.public_dict())
        self.run_dir.write_summary(self.summary())
        with run_log_file(self.run_dir.log_path):
            log.info(
                "run %s: %d sites, app %s, record in %s",
                self.run_id,
                len(self.config.sites),
                self.config.app.name,
                self.run_dir.path,
            )
            private = Path(tempfile.mkdtemp(prefix="fedsim-"))  # sockets, tokens: not recorded
            relay: RelayServer | None = None
            try:
                bwrap_path()
                self.app_env = ensure_app_env(self.config.app)
                relay = self._start_relay(private)
                self._start_sites(private, relay.socket_path)
                self._watch()
                self.status = "finished"
            except KeyboardInterrupt as exc:
                self._fail(Interrupted("interrupted (Ctrl-C); every site was stopped"), exc)
            except RunFailed as exc:
                self._fail(exc, exc)
            except BaseException as exc:
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self._stop_and_collect(relay)
                shutil.rmtree(private, ignore_errors=True)
                log.info(
                    "run %s %s in %.1f s",
                    self.run_id,
                    self.status,
                    (self.ended or time.time()) - self.started,
                )
        return RunResult(self.run_dir.path, self.summary())

    def _fail(self, error: RunFailed, cause: BaseException) -> None:
        self.status, self.error = "failed", str(error)
        log.error("%s", error)
        error.run_dir = str(self.run_dir.path)
        raise error from (None if cause is error else cause)

    def _start_relay(self, private: Path) -> RelayServer:
        names = tuple(s.name for s in self.config.sites)
        tokens = {name: secrets.token_urlsafe(32) for name in names}
        self.relay_state = RelayState(Routing(names, self.config.coordinator.name), tokens)
        relay = RelayServer(self.relay_state, private / "relay.sock")
        relay.start()
        log.info("relay listening on %s", relay.socket_path, extra={"component": "relay"})
        return relay

    def _start_sites(self, private: Path, relay_socket: Path) -> None:
        assert self.relay_state is not None and self.app_env is not None
        names = [s.name for s in self.config.sites]
        for cfg in self.config.sites:
            site_dir = self.run_dir.site_dir(cfg.name)
            site = LocalSite(cfg.name, site_dir, private / "sites" / cfg.name, relay_socket)
            self.records[cfg.name] = SiteRecord(
                cfg.name, cfg.coordinator, site, site_dir / "site.log"
            )
            site.put_inputs(cfg.inputs)
        for cfg in self.config.sites:
            rec = self.records[cfg.name]
            launch = AgentLaunch(
                config={
                    "site": cfg.name,
                    "clients": names,
                    "coordinator": self.config.coordinator.name,
                    "app_python": str(env_python(self.app_env)),
                    "poll_interval": self.config.poll_interval,
                    "shorten_waits": self.config.shorten_waits,
                },
                token=self.relay_state.tokens[cfg.name],
                env_file=cfg.env_file,
                app_dir=self.config.app,
                app_env=self.app_env,
            )
            rec.site.start(launch, rec.on_line)
            rec.status, rec.started = "running", time.time()
            log.info("site %s started%s", cfg.name, " (coordinator)" if cfg.coordinator else "")
        self.run_dir.write_summary(self.summary())

    def _watch(self) -> None:
        deadline = self.started + self.config.timeout
        coordinator = self.config.coordinator.name
        coordinator_done: float | None = None
        shown: dict[str, Any] = {}
        while True:
            now = time.time()
            for rec in self.records.values():
                if rec.status != "running":
                    continue
                code = rec.site.poll()
                if code is None:
                    continue
                rec.exit_code, rec.ended = code, now
                if code != 0:
                    rec.status = "failed"
                    time.sleep(0.2)  # let the reader hand over the site's last lines
                    raise SiteFailed(
                        f"site {rec.name} failed (exit code {code}); last lines of its log:\n"
                        f"{rec.tail_text()}"
                    )
                rec.status = "finished"
                log.info("site %s finished", rec.name)
                self.run_dir.write_summary(self.summary())
            self._show_progress(shown)
            running = [r for r in self.records.values() if r.status == "running"]
            if not running:
                return
            if self.records[coordinator].status == "finished":
                coordinator_done = coordinator_done or now
                if now - coordinator_done > PARTICIPANT_GRACE:
                    for rec in running:
                        log.warning(
                            "site %s had not finished %.0f s after the coordinator; stopping it",
                            rec.name,
                            PARTICIPANT_GRACE,
                        )
                        rec.site.stop()
                        rec.status, rec.ended = "stopped", time.time()
                    return
            if now > deadline:
                raise RunTimeout(
                    f"timeout: the run took longer than {self.config.timeout:g} s "
                    f"(sites still running: {', '.join(r.name for r in running)})"
                )
            time.sleep(WATCH_INTERVAL)

    def _show_progress(self, shown: dict[str, Any]) -> None:
        """Log each site's app state when it changes, so long runs show where they are."""
        if self.relay_state is None:
            return
        _, statuses = self.relay_state.snapshot()
        for name, status in statuses.items():
            view = (status.get("message"), status.get("progress"))
            if shown.get(name) != view:
                shown[name] = view
                progress = status.get("progress")
                log.info(
                    "site %s: %s%s",
                    name,
                    status.get("message") or status.get("state"),
                    "" if progress is None else f" ({progress:.0%})",
                )

    def _stop_and_collect(self, relay: RelayServer | None) -> None:
        now = time.time()
        for rec in self.records.values():
            rec.site.stop()
            if rec.status == "running":
                rec.status, rec.ended = "stopped", now
                rec.exit_code = rec.site.poll()
        if relay is not None:
            relay.stop()
        for name, rec in self.records.items():
            rec.site.collect()
            self.run_dir.zip_output(name)
        self.ended = time.time()
        if self.relay_state is not None:
            self.run_dir.write_traffic(self.relay_state.snapshot()[0])
        self.run_dir.write_summary(self.summary())


def run(config: RunConfig) -> RunResult:
    return Run(config).execute()
