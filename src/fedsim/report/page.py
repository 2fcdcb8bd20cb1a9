"""The report as one HTML page: inline CSS, inline SVG, PNG plots as data URLs, no script.

One file that opens anywhere, offline, and can be mailed or archived with the run: nothing
in it refers to another file or to the network. Every text that comes from the run (site
names, app messages, config values) is escaped: an app chooses its own messages.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from statistics import median
from typing import Any

import pandas as pd

from fedsim.report import charts
from fedsim.report.record import RunRecord, epoch

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 70rem;
       padding: 1.5rem; color: #212121; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.figures { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.figure { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .9rem; min-width: 8rem; }
.figure b { display: block; font-size: 1.25rem; }
.finished, .passed { color: #2e7d32; } .failed { color: #c62828; }
.stopped, .running, .pending { color: #ef6c00; }
.error { background: #ffebee; border-left: 4px solid #c62828; padding: .6rem 1rem;
         white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; }
.note { color: #616161; font-style: italic; }
table { border-collapse: collapse; margin: .6rem 0; }
th, td { border-bottom: 1px solid #e0e0e0; padding: .25rem .7rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg { max-width: 100%; height: auto; }
img { max-width: 100%; }
pre { background: #f5f5f5; padding: .8rem; overflow-x: auto; font-size: 13px; }
"""


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(str(v))}</td>' if i in numeric else f"<td>{v}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status(status: str | None) -> str:
    text = escape(str(status))
    return f'<span class="{text}">{text}</span>'


def _section(ident: str, title: str, *parts: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>{"".join(parts)}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _overview(record: RunRecord) -> str:
    s = record.summary
    figures = [
        ("status", _status(s["status"])),
        ("duration", escape(f"{record.duration:.1f} s")),
        ("sites", str(len(record.sites))),
        ("messages", _count(s.get("messages", len(record.traffic)))),
        ("bytes", _count(s.get("bytes", 0), grouped=True)),
        ("app", f'<span title="{escape(s["app"])}">{escape(Path(s["app"]).name)}</span>'),
    ]
    cards = "".join(f'<div class="figure">{name}<b>{value}</b></div>' for name, value in figures)
    error = f'<div class="error">{escape(s["error"])}</div>' if s.get("error") else ""
    rows = [
        [
            escape(name),
            "coordinator" if site["coordinator"] else "participant",
            _status(site["status"]),
            escape(str(site["app"].get("message") or site["app"].get("state") or "")),
            _count(site["messages_sent"]),
            _count(site["bytes_sent"]),
            _count(site["messages_received"]),
            _count(site["bytes_received"]),
        ]
        for name, site in s["sites"].items()
    ]
    header = ["site", "role", "status", "last app state", "sent", "bytes sent", "received",
              "bytes received"]  # fmt: skip
    sites = _table(header, rows, numeric={4, 5, 6, 7})
    return f'<div class="figures">{cards}</div>{error}{sites}'


def _timeline(record: RunRecord) -> str:
    if record.states is None or record.states.empty:
        return _section(
            "timeline",
            "Timeline",
            _note("No state of any site was recorded (states.csv is missing or empty: a run made "
                  "before fedsim kept it, or one that stopped before its sites started)."),
        )  # fmt: skip
    return _section(
        "timeline",
        "Timeline of each site's states",
        charts.timeline(record),
        _note("A state is seen within 50 ms of the app reporting it; an app that passes "
              "through two states within that time shows the second only."),
    )  # fmt: skip


def _count(value: int | None, grouped: bool = False) -> str:
    """A count, or "n/a" where the platform cannot tell (featurecloud.ai's traffic)."""
    if value is None:
        return "n/a"
    return f"{value:,}" if grouped else str(value)


def _unavailable_traffic(record: RunRecord, note: str) -> str:
    """A platform that cannot see the messages between sites says so; what each site moved
    to and from its own controller is shown instead, when recorded."""
    rows = [
        [escape(name), _count(moved.get("uploaded_bytes")), _count(moved.get("downloaded_bytes"))]
        for name, site in record.summary["sites"].items()
        if (moved := site.get("controller"))
    ]
    header = ["site", "bytes to its own controller", "bytes from it (logs, results)"]
    table = _table(header, rows, numeric={1, 2}) if rows else ""
    return _section("traffic", "Traffic", _note(note), table)


def _traffic(record: RunRecord) -> str:
    note = record.summary.get("traffic_note")
    if note:
        return _unavailable_traffic(record, str(note))
    if record.traffic.empty:
        return _section("traffic", "Traffic", _note("No message crossed between sites."))
    rounds = charts.round_table(record)
    rows = [
        [escape(str(r.step)), escape(str(r.round)), r.messages, r.bytes,
         f"{r.first:.3f}", f"{r.last:.3f}", f"{(r.last - r.first) * 1000:.0f}"]
        for r in rounds.itertuples()
    ]  # fmt: skip
    header = ["step", "round (memo)", "messages", "bytes", "first sent (s)", "last sent (s)",
              "spread (ms)"]  # fmt: skip
    return _section(
        "traffic",
        "Traffic",
        "<h3>Per site</h3>",
        charts.traffic_per_site(record),
        "<h3>Per round</h3>",
        charts.traffic_per_round(record),
        _table(header, rows, numeric={2, 3, 4, 5, 6}),
    )


def _latency(record: RunRecord) -> str:
    """Per pair of sites: how long messages took to reach the receiver's mailbox (the
    relay's handling and any network profile) and to reach its app (acknowledged)."""
    traffic = record.traffic
    if traffic.empty or "delivered" not in traffic or "read" not in traffic:
        return _section(
            "latency",
            "Message latency",
            _note("Not recorded: this run's traffic.csv does not say when each message was "
                  "delivered and read (runs made before fedsim recorded it)."),
        )  # fmt: skip
    rows = []
    for (sender, receiver), group in traffic.groupby(["sender", "receiver"], sort=True):
        sent = group["time"] + record.start
        delivered = [epoch(t) for t in group["delivered"] if t]
        read = [epoch(t) for t, d in zip(group["read"], group["delivered"], strict=True) if t and d]
        to_box = [d - t for d, t in zip(delivered, sent, strict=False)]
        to_app = [r - t for r, t in zip(read, sent, strict=False)]
        dropped = int((group["fault"] == "dropped").sum()) if "fault" in group else 0
        handed = pd.to_numeric(group.get("handed_out"), errors="coerce")
        again = int((handed > 1).sum()) if handed is not None else 0
        rows.append([
            escape(sender), escape(receiver), len(group),
            _ms(median(to_box)) if to_box else "-", _ms(max(to_box)) if to_box else "-",
            _ms(median(to_app)) if to_app else "-", _ms(max(to_app)) if to_app else "-",
            dropped, again,
        ])  # fmt: skip
    header = ["from", "to", "messages", "to mailbox, median (ms)", "max (ms)",
              "to app, median (ms)", "max (ms)", "dropped", "handed out again"]  # fmt: skip
    return _section(
        "latency",
        "Message latency",
        _table(header, rows, numeric={2, 3, 4, 5, 6, 7, 8}),
        _note("From when the relay got a message to when it was in the receiver's mailbox "
              "(immediate, unless a network profile delays it), and to when the receiver's "
              "agent acknowledged it (it had reached the app)."),
    )  # fmt: skip


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def _memory(record: RunRecord) -> str:
    chart = charts.memory(record)
    note = _note("Only each site's peak is recorded (the app's at the end of each step, the "
                 "agent's as it exits), not memory over time.")  # fmt: skip
    if chart is None:
        return _section("memory", "Memory per site", _note("No memory was recorded."), note)
    return _section("memory", "Memory per site", chart, note)


def _comparison(record: RunRecord) -> str:
    c = record.comparison
    if c is None:
        return _section(
            "comparison",
            "Federated against centralised",
            _note("This run has no comparison (fedsim run --compare or fedsim compare)."),
        )
    rows = [
        [escape(m["name"]), f"{m['value']:.6g}", _limit(m), _verdict(m), _where(m)]
        for m in c["measures"]
    ]
    images = "".join(
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{escape(name)}</figcaption></figure>'
        for name, data in record.plots.items()
    )
    verdict = _status("passed" if c["passed"] else "failed")
    return _section(
        "comparison",
        "Federated against centralised",
        f"<p>{escape(str(c['app']))}: {verdict}</p>",
        _note(escape(c["problem"])) if c.get("problem") else "",
        _table(["measure", "value", "limit", "verdict", "worst value at"], rows, numeric={1}),
        _skipped(c.get("skipped") or []),
        images,
    )


def _limit(measure: dict[str, Any]) -> str:
    """``≤ 1e-06`` for a difference, ``≥ 0.999`` for a correlation, empty if only reported."""
    limit = measure.get("limit", measure.get("tolerance"))
    if limit is None:
        return ""
    return f"{'≥' if measure.get('bound') == 'lower' else '≤'} {limit:g}"


def _verdict(measure: dict[str, Any]) -> str:
    if measure.get("passed") is None:
        return "reported"
    return _status("passed" if measure["passed"] else "failed")


def _where(measure: dict[str, Any]) -> str:
    where = measure.get("where") or {}
    return escape(", ".join(f"{k} {v}" for k, v in where.items()))


def _skipped(skipped: list[dict[str, Any]]) -> str:
    if not skipped:
        return ""
    items = "".join(
        f"<li>{escape(str(s.get('file', '?')))}: {escape(str(s.get('reason', '')))}</li>"
        for s in skipped
    )
    return f"<p>Not compared:</p><ul>{items}</ul>"


def _version(python: object) -> str:
    """``3.11.7`` of ``3.11.7 (main, May 9 2026, ...) [GCC 12.2.0]``."""
    return str(python).split(" ", 1)[0]


def _config(record: RunRecord) -> str:
    config = (
        f"<pre>{escape(record.config_text)}</pre>"
        if record.config_text is not None
        else _note("config.toml is missing.")
    )
    v = record.versions
    if v is None:
        return _section("config", "Config and versions", config, _note("No versions.json."))
    steps = "".join(
        f"<h3>step {i}: {escape(str(step['app']))}</h3>"
        f"<p>app sha256 <code>{escape(str(step['app_sha256']))}</code>, "
        f"Python {escape(_version(step.get('python')))}</p>"
        f"<details><summary>{len(step.get('packages', []))} packages</summary>"
        f"<pre>{escape(chr(10).join(map(str, step.get('packages', []))))}</pre></details>"
        for i, step in enumerate(v.get("steps", []), start=1)
    )
    versions = (
        f"<p>fedsim {escape(str(v.get('fedsim')))}, seed {escape(json.dumps(v.get('seed')))}, "
        f"Python {escape(_version(v.get('fedsim_python')))}</p>"
    )
    return _section("config", "Config and versions", config, versions, steps)


def render(record: RunRecord) -> str:
    run_id = escape(str(record.summary.get("run_id", record.path.name)))
    body = "".join(
        [
            f"<h1>fedsim run {run_id}</h1>",
            f"<p>{escape(str(record.path))}</p>",
            _overview(record),
            _timeline(record),
            _traffic(record),
            _latency(record),
            _memory(record),
            _comparison(record),
            _config(record),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fedsim run {run_id}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )
