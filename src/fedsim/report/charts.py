"""The report's pictures, drawn with matplotlib as SVG text to put inline in the page.

Inline SVG keeps the report one file that needs no network, stays sharp when zoomed, and
keeps its text as text (``svg.fonttype: none``), so a browser can find and select it.
Figures are made without pyplot: no global state, nothing left open.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from fedsim.report.record import RunRecord

MIB = 2**20
STATUS_COLOURS = {"finished": "#2e7d32", "failed": "#c62828", "stopped": "#ef6c00"}
LANE_HEIGHT = 0.6


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any) -> str:
    """The figure as an ``<svg>`` element: the XML prolog and DOCTYPE are for files."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _palette(labels: list[str]) -> dict[str, Any]:
    """Distinct colours, leaving out tab20's oranges, greens and reds: on the timeline those
    mean a site's fate (STATUS_COLOURS)."""
    from matplotlib import colormaps

    colours = [c for i, c in enumerate(colormaps["tab20"].colors) if not 2 <= i <= 7]
    return {label: colours[i % len(colours)] for i, label in enumerate(labels)}


def _legend(ax: Any, **handles: Any) -> None:
    """Beside the plot, never over a bar."""
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False, **handles
    )


def state_label(row: pd.Series) -> str:
    """What a stretch of a site's lane is called: its app's message, else its state, else
    (before the app reports, or after the site ended) the site's own status."""
    if row["status"] != "running":
        return row["status"]
    return row["message"] or row["state"] or "starting"


def _lanes(record: RunRecord) -> list[tuple[str, str]]:
    """(step, site) in the order the run had them."""
    steps = [str(s["step"]) for s in record.summary.get("steps", [])] or ["1"]
    return [(step, site) for step in steps for site in record.sites]


def timeline(record: RunRecord) -> str:
    """One lane per site (and step): coloured stretches for each app state, the site's fate
    at the end, and a tick for every message it sent."""
    lanes = _lanes(record)
    states = record.states
    assert states is not None
    labelled = states.assign(label=states.apply(state_label, axis=1))
    labels = list(dict.fromkeys(labelled["label"]))
    colours = {**_palette([x for x in labels if x not in STATUS_COLOURS]), **STATUS_COLOURS}
    fig = _figure(10, 1.2 + 0.55 * len(lanes))
    ax = fig.subplots()
    end = record.duration
    for y, (step, site) in enumerate(lanes):
        rows = labelled[(labelled["step"] == step) & (labelled["site"] == site)]
        times = [*rows["time"], end]
        for (_, row), until in zip(rows.iterrows(), times[1:], strict=True):
            if row["status"] in STATUS_COLOURS and until == end:
                until = row["time"] + end * 0.01  # the fate: a mark, not a stretch
            ax.barh(
                y,
                until - row["time"],
                left=row["time"],
                height=LANE_HEIGHT,
                color=colours[row["label"]],
                edgecolor="white",
                linewidth=0.5,
            )
        sent = record.traffic[(record.traffic["sender"] == site) & (record.traffic["step"] == step)]
        ax.plot(
            sent["time"],
            [y + LANE_HEIGHT / 2 + 0.08] * len(sent),
            "v",
            color="#333",
            markersize=4,
            linestyle="none",
        )
    ax.set_yticks(range(len(lanes)))
    many_steps = len({step for step, _ in lanes}) > 1
    ax.set_yticklabels([f"{site} (step {step})" if many_steps else site for step, site in lanes])
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.02 or 1)
    ax.set_xlabel("seconds since the run started  (▼ a message sent)")
    from matplotlib.patches import Patch

    _legend(ax, handles=[Patch(color=colours[x], label=x) for x in labels])
    return _svg(fig)


def traffic_per_site(record: RunRecord) -> str:
    sites = record.sites
    sent = [record.summary["sites"][s]["bytes_sent"] for s in sites]
    received = [record.summary["sites"][s]["bytes_received"] for s in sites]
    fig = _figure(8, 1.0 + 0.5 * len(sites))
    ax = fig.subplots()
    ys = range(len(sites))
    ax.barh([y - 0.2 for y in ys], sent, height=0.4, label="sent", color="#1565c0")
    ax.barh([y + 0.2 for y in ys], received, height=0.4, label="received", color="#90caf9")
    ax.set_yticks(list(ys), sites)
    ax.invert_yaxis()
    ax.set_xlabel("bytes")
    _legend(ax)
    return _svg(fig)


def round_table(record: RunRecord) -> pd.DataFrame:
    """Per step and memo (a FeatureCloud round), in the order rounds began: messages, bytes,
    and when the relay accepted its first and its last message."""
    traffic = record.traffic.assign(round=record.traffic["memo"].replace("", "(no memo)"))
    grouped = traffic.groupby(["step", "round"], sort=False)
    table = grouped.agg(
        messages=("bytes", "size"),
        bytes=("bytes", "sum"),
        first=("time", "min"),
        last=("time", "max"),
    )
    return table.sort_values("first").reset_index()


def traffic_per_round(record: RunRecord) -> str:
    """Bytes per round, stacked by sender."""
    rounds = round_table(record)
    names = [
        r if len(rounds["step"].unique()) == 1 else f"{s}: {r}"
        for s, r in zip(rounds["step"], rounds["round"], strict=True)
    ]
    fig = _figure(8, 1.0 + 0.45 * len(rounds))
    ax = fig.subplots()
    colours = _palette(record.sites)
    left = [0] * len(rounds)
    for site in record.sites:
        mine = record.traffic[record.traffic["sender"] == site].assign(
            round=lambda f: f["memo"].replace("", "(no memo)")
        )
        sizes = mine.groupby(["step", "round"])["bytes"].sum()
        values = [
            int(sizes.get((s, r), 0)) for s, r in zip(rounds["step"], rounds["round"], strict=True)
        ]
        if any(values):
            ax.barh(range(len(rounds)), values, left=left, label=site, color=colours[site])
            left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(range(len(rounds)), names)
    ax.invert_yaxis()
    ax.set_xlabel("bytes sent in the round, by sender")
    _legend(ax)
    return _svg(fig)


def memory(record: RunRecord) -> str | None:
    """Each site's peaks (MiB): the app's resident set, its memory group, the agent."""
    kinds = {
        "app_peak_rss_bytes": "app (resident)",
        "app_peak_memory_bytes": "app (memory group)",
        "agent_peak_rss_bytes": "agent (resident)",
    }
    values = {
        label: [record.summary["sites"][s]["memory"].get(key, 0) / MIB for s in record.sites]
        for key, label in kinds.items()
    }
    values = {label: v for label, v in values.items() if any(v)}
    if not values:
        return None
    fig = _figure(8, 1.0 + 0.6 * len(record.sites))
    ax = fig.subplots()
    height = 0.8 / len(values)
    for i, (label, v) in enumerate(values.items()):
        ys = [y - 0.4 + height * (i + 0.5) for y in range(len(record.sites))]
        ax.barh(ys, v, height=height, label=label)
    ax.set_yticks(range(len(record.sites)), record.sites)
    ax.invert_yaxis()
    ax.set_xlabel("peak memory, MiB")
    _legend(ax)
    return _svg(fig)
