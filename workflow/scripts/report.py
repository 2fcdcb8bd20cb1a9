"""Gather the benchmark's comparisons into one table, and draw and write its report.

    python report.py summary RUNS/.../record.json ... --out results/summary.csv
    python report.py report results/summary.csv --out results/report.md --figures results/figures

``summary`` reads the records ``run_compare.py`` wrote (one per app x strategy x sites) and
writes one row per measure: app, strategy, sites, measure, value, tolerance, passed, the
federated run's duration_s, bytes and messages, the centralised run's duration_s, fedsim's
exit code and the federated run directory.

``report`` draws, per app, ``<app>-measures.png`` (each measure against the number of sites,
one line per split strategy, the tolerance dashed, a failed measure crossed out in red) and
``<app>-cost.png`` (the federated run's time and the bytes the sites sent against the number
of sites), and writes a Markdown report that shows them with the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

COLUMNS = [
    "app",
    "strategy",
    "sites",
    "measure",
    "value",
    "tolerance",
    "passed",
    "duration_s",
    "bytes",
    "messages",
    "centralised_duration_s",
    "exit_code",
    "run_dir",
]
STRATEGY_ORDER = ["iid", "size-skew", "label-skew"]
STYLES = {
    "iid": ("tab:blue", "o"),
    "size-skew": ("tab:orange", "s"),
    "label-skew": ("tab:green", "^"),
}
ZERO_FLOOR = 1e-17  # a measure of exactly 0 is drawn here on a log axis (below double eps)


# --- summary --------------------------------------------------------------------------------


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    federated, centralised = record["federated"], record["centralised"]
    return [
        {
            "app": record["app"],
            "strategy": record["strategy"],
            "sites": record["sites"],
            "measure": measure["name"],
            "value": measure["value"],
            "tolerance": measure["limit"],  # None: reported, not judged
            "passed": measure["passed"] is not False,
            "duration_s": federated["duration_s"],
            "bytes": federated["bytes"],
            "messages": federated["messages"],
            "centralised_duration_s": centralised["duration_s"],
            "exit_code": record["exit_code"],
            "run_dir": record["run_dir"],
        }
        for measure in record["measures"]
    ]


def strategy_key(strategy: str) -> int:
    return STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)


def write_summary(records: Iterable[Path], out: Path) -> pd.DataFrame:
    rows = [row for path in records for row in summary_rows(json.loads(path.read_text()))]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(
        ["app", "strategy", "sites"],
        key=lambda column: column.map(strategy_key) if column.name == "strategy" else column,
        kind="stable",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table


# --- figures --------------------------------------------------------------------------------


def strategies_of(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["strategy"].unique(), key=strategy_key)


def style_sites_axis(ax: Axes, sites: Sequence[int]) -> None:
    ax.set_xticks(list(sites))
    ax.set_xlabel("sites")
    ax.grid(True, alpha=0.3)


def draw_measure(ax: Axes, frame: pd.DataFrame, measure: str) -> None:
    rows = frame[frame["measure"] == measure]
    values = rows["value"].astype(float)
    tolerances = rows["tolerance"].dropna().astype(float).unique()
    positive = [v for v in [*values, *tolerances] if v > 0]
    # A log axis for differences that should be tiny: a tolerance far below 1, or values
    # that span orders of magnitude; accuracies and correlations near 1 stay linear.
    log = bool(positive) and (
        any(0 < t < 1e-3 for t in tolerances) or max(positive) / min(positive) > 100
    )
    for strategy in strategies_of(rows):
        part = rows[rows["strategy"] == strategy].sort_values("sites")
        y = part["value"].astype(float)
        if log:
            y = y.clip(lower=ZERO_FLOOR)
        colour, marker = STYLES.get(strategy, ("tab:gray", "D"))
        ax.plot(part["sites"], y, marker=marker, color=colour, label=strategy)
        failed = ~part["passed"].astype(bool)
        if failed.any():
            ax.scatter(part["sites"][failed], y[failed], marker="x", s=120, color="red", zorder=5)
    for tolerance in tolerances:
        ax.axhline(tolerance, color="gray", linestyle="--", linewidth=1, label="tolerance")
    if log:
        ax.set_yscale("log")
        if (values <= 0).any():
            ax.set_title(f"{measure}\n(0 drawn at {ZERO_FLOOR:g})", fontsize=9)
        else:
            ax.set_title(measure, fontsize=9)
    else:
        ax.set_title(measure, fontsize=9)
    style_sites_axis(ax, sorted(frame["sites"].unique()))


def draw_measures(frame: pd.DataFrame, app: str, path: Path) -> None:
    measures = list(dict.fromkeys(frame["measure"]))
    columns = min(3, len(measures))
    rows = math.ceil(len(measures) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, measure in zip(axes, measures, strict=False):
        draw_measure(ax, frame, measure)
    for ax in axes[len(measures) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    figure.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=len(unique))
    figure.suptitle(f"{app}: federated against centralised")
    figure.savefig(path, dpi=90)


def draw_cost(frame: pd.DataFrame, app: str, path: Path) -> None:
    cells = frame.drop_duplicates(["strategy", "sites"])
    figure = Figure(figsize=(8.4, 3.4), layout="constrained")
    panels = [("duration_s", "federated run time (s)"), ("bytes", "bytes sent between sites")]
    axes = figure.subplots(1, len(panels))
    for ax, (column, title) in zip(axes, panels, strict=True):
        for strategy in strategies_of(cells):
            part = cells[cells["strategy"] == strategy].sort_values("sites")
            colour, marker = STYLES.get(strategy, ("tab:gray", "D"))
            ax.plot(part["sites"], part[column], marker=marker, color=colour, label=strategy)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.15 * max(cells[column].max(), 1))
        style_sites_axis(ax, sorted(cells["sites"].unique()))
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{app}: cost of the federated run")
    figure.savefig(path, dpi=90)


# --- report ---------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.3g}"


def write_report(summary: Path, out: Path, figures: Path) -> list[Path]:
    """Draw every app's figures into ``figures``, write the report; return the figures."""
    table = pd.read_csv(summary)
    table["passed"] = table["passed"].astype(str).str.lower() == "true"
    figures.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = table.drop_duplicates(["app", "strategy", "sites"])
    failed = table[~table["passed"]]
    site_counts = ", ".join(str(n) for n in sorted(table["sites"].unique()))
    lines = [
        "# fedsim benchmark: federated against centralised",
        "",
        f"{plural(len(cells), 'comparison')} (`fedsim compare`: one federated and one"
        f" centralised run each) of {plural(table['app'].nunique(), 'app')} over split"
        f" strategies {', '.join(strategies_of(table))} and {site_counts} sites;"
        f" {plural(len(table), 'measure')}, {len(failed)} beyond their tolerance."
        f" The numbers: [`summary.csv`]({os.path.relpath(summary, out.parent)}).",
        "",
    ]
    if len(failed):
        lines += ["## Failed measures", ""]
        lines.append(
            markdown_table(
                ["app", "strategy", "sites", "measure", "value", "tolerance"],
                failed[["app", "strategy", "sites", "measure", "value", "tolerance"]]
                .assign(
                    value=failed["value"].map(number), tolerance=failed["tolerance"].map(number)
                )
                .itertuples(index=False),
            )
        )
        lines.append("")
    drawn: list[Path] = []
    for app in sorted(table["app"].unique()):
        frame = table[table["app"] == app]
        measures_png = figures / f"{app}-measures.png"
        cost_png = figures / f"{app}-cost.png"
        draw_measures(frame, app, measures_png)
        draw_cost(frame, app, cost_png)
        drawn += [measures_png, cost_png]
        lines += [
            f"## {app}",
            "",
            f"![{app}: each measure against the number of sites]"
            f"({os.path.relpath(measures_png, out.parent)})",
            "",
            f"![{app}: run time and bytes against the number of sites]"
            f"({os.path.relpath(cost_png, out.parent)})",
            "",
        ]
        measures = list(dict.fromkeys(frame["measure"]))
        rows = []
        for (strategy, sites), cell in sorted(
            frame.groupby(["strategy", "sites"]), key=lambda g: (strategy_key(g[0][0]), g[0][1])
        ):
            by_name = cell.set_index("measure")
            first = cell.iloc[0]
            rows.append(
                [
                    strategy,
                    sites,
                    *(
                        number(by_name.at[m, "value"]) + ("" if by_name.at[m, "passed"] else " ✗")
                        if m in by_name.index
                        else "-"
                        for m in measures
                    ),
                    "yes" if cell["passed"].all() else "**no**",
                    number(first["duration_s"]),
                    int(first["bytes"]),
                    int(first["messages"]),
                ]
            )
        tolerances = [number(frame[frame["measure"] == m]["tolerance"].iloc[0]) for m in measures]
        header = [
            "strategy",
            "sites",
            *(f"{m} (tol. {t})" for m, t in zip(measures, tolerances, strict=True)),
            "passed",
            "run time (s)",
            "bytes",
            "messages",
        ]
        lines += [markdown_table(header, rows), ""]
    out.write_text("\n".join(lines))
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="records -> one table")
    summary.add_argument("records", type=Path, nargs="+", help="run_compare.py's records")
    summary.add_argument("--out", type=Path, required=True, help="the CSV to write")
    report = commands.add_parser("report", help="table -> figures and Markdown")
    report.add_argument("summary", type=Path, help="the summary CSV")
    report.add_argument("--out", type=Path, required=True, help="the Markdown report to write")
    report.add_argument("--figures", type=Path, required=True, help="the folder for the PNGs")
    args = parser.parse_args(argv)
    if args.command == "summary":
        write_summary(args.records, args.out)
    else:
        write_report(args.summary, args.out, args.figures)


if __name__ == "__main__":
    main()
