"""``fedsim status`` and ``fedsim logs``: read a run directory, running or done."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fedsim.rundir import RunDir

RunArg = Annotated[
    str | None, typer.Argument(help="A run directory or run id; the newest run when left out.")
]
OutputDirOpt = Annotated[Path, typer.Option("--runs", help="Where runs are kept.")]


def find_or_abort(run: str | None, runs: Path) -> RunDir:
    """The run named (or the newest), or a short error (exit 2) naming where it looked."""
    from fedsim.cli.output import abort
    from fedsim.errors import ExitCode
    from fedsim.rundir import find_run

    try:
        return find_run(run, runs)
    except FileNotFoundError as exc:
        abort(str(exc), ExitCode.CONFIG)


def status(
    run: RunArg = None,
    runs: OutputDirOpt = Path("runs"),
    json_output: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
) -> None:
    """Show a run's status, timing and traffic per site."""
    import json

    from rich.table import Table

    from fedsim.cli.output import stdout

    run_dir = find_or_abort(run, runs)
    summary = run_dir.read_summary()
    if json_output:
        stdout.print_json(json.dumps(summary))
        return
    stdout.print(
        f"run {summary['run_id']}: [bold]{summary['status']}[/] in {summary['duration_s']} s"
        if summary["duration_s"] is not None
        else f"run {summary['run_id']}: [bold]{summary['status']}[/]"
    )
    if summary.get("error"):
        stdout.print(summary["error"], markup=False)
    table = Table("site", "role", "status", "app state", "sent", "received")
    for name, site in summary["sites"].items():
        table.add_row(
            name,
            "coordinator" if site["coordinator"] else "participant",
            site["status"],
            str(site["app"].get("message") or ""),
            f"{site['messages_sent']} msg / {site['bytes_sent']} B",
            f"{site['messages_received']} msg / {site['bytes_received']} B",
        )
    stdout.print(table)
    _show_comparison(run_dir.path)
    stdout.print(str(run_dir.path))


def _show_comparison(path: Path) -> None:
    """A federated run's comparison: while ``fedsim compare`` runs, the federated run is
    already finished, and without this line status would read as "all done"."""
    import json

    from fedsim.cli.output import stdout
    from fedsim.rundir import CENTRAL_RUNS, COMPARISON, find_run

    try:
        central = find_run(None, path / CENTRAL_RUNS)
    except FileNotFoundError:
        return
    summary = central.read_summary()
    duration = "" if summary["duration_s"] is None else f" in {summary['duration_s']} s"
    state = summary["status"]
    if state == "running":
        app = next(iter(summary["sites"].values()), {}).get("app", {})
        state += f" (app state: {app.get('message') or app.get('state') or 'starting'})"
    stdout.print(f"centralised run {summary['run_id']}: [bold]{state}[/]{duration}")
    if (path / COMPARISON).is_file():
        comparison = json.loads((path / COMPARISON).read_text())
        verdict = "passed" if comparison["passed"] else f"failed: {comparison.get('problem')}"
        stdout.print(f"comparison: {verdict}", markup=False)


def _check_site(site: str, summary: dict[str, Any]) -> None:
    """A misspelt site would otherwise match no line and print nothing, which reads as "the
    site logged nothing"; naming the run's sites makes the typo obvious."""
    from fedsim.cli.output import abort
    from fedsim.errors import ExitCode

    known = [*summary.get("sites", {}), "orchestrator"]
    if site not in known:
        abort(f"run has no site {site!r}; its sites are: {', '.join(known)}", ExitCode.CONFIG)


def logs(
    run: RunArg = None,
    runs: OutputDirOpt = Path("runs"),
    site: Annotated[str | None, typer.Option(help="Only this site's lines.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
) -> None:
    """Print a run's merged log (orchestrator, relay, every site's agent and app)."""
    from fedsim.logs import LOG_SITE_FIELD

    run_dir = find_or_abort(run, runs)
    if site is not None:
        _check_site(site, run_dir.read_summary())

    def wanted(line: str) -> bool:
        fields = line.split(None, LOG_SITE_FIELD + 1)
        return site is None or (len(fields) > LOG_SITE_FIELD and fields[LOG_SITE_FIELD] == site)

    try:
        with open(run_dir.log_path, encoding="utf-8") as handle:
            while True:
                line = handle.readline()
                if line:
                    if wanted(line):
                        typer.echo(line, nl=False)
                    continue
                if not follow or run_dir.read_summary()["status"] != "running":
                    break
                time.sleep(0.2)
    except BrokenPipeError:
        # the reader has what it wanted (``fedsim logs | head``, ``grep -m1``): a normal end,
        # not a failure; stdout goes to /dev/null so that its final flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


COMMANDS = {"status": status, "logs": logs}
