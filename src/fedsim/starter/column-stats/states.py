"""Federated column statistics: the rows, mean and standard deviation of numeric columns.

Every site sends, per column, its row count, sum and sum of squares to the coordinator
(never a row); the coordinator adds them up and broadcasts the statistics; every site writes
them to /mnt/output/stats.csv. The starting point of fedsim's docs/writing-an-app.md.

config.yml (optional, in /mnt/input):
    column_stats:
      columns: [height, weight]   # default: every numeric column of data.csv
"""

import math
import os

import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

INPUT_DIR = "/mnt/input"  # this site's files (read-only)
OUTPUT_DIR = "/mnt/output"  # this site's results
# Memos name the rounds. Without them a coordinator alone (the centralised run of
# `fedsim compare`) files its own broadcast under None but awaits it as a gather round,
# and waits for ever.
SUMS_MEMO = "local-sums"
STATS_MEMO = "global-stats"


def configured_columns():
    path = os.path.join(INPUT_DIR, "config.yml")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return ((yaml.safe_load(handle) or {}).get("column_stats") or {}).get("columns")


@app_state("initial")
class LocalSums(AppState):
    def register(self):
        self.register_transition("aggregate", Role.COORDINATOR)
        self.register_transition("write", Role.PARTICIPANT)

    def run(self):
        data = pd.read_csv(os.path.join(INPUT_DIR, "data.csv"))
        columns = configured_columns() or list(data.select_dtypes("number").columns)
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise KeyError(f"config.yml: column_stats.columns: {missing} not in data.csv")
        values = data[columns].astype(float)
        self.send_data_to_coordinator(
            {
                "columns": columns,
                "rows": len(values),
                "sums": values.sum().tolist(),
                "squares": (values**2).sum().tolist(),
            },
            memo=SUMS_MEMO,
        )
        return "aggregate" if self.is_coordinator else "write"


@app_state("aggregate", Role.COORDINATOR)
class Aggregate(AppState):
    def register(self):
        self.register_transition("write", Role.COORDINATOR)

    def run(self):
        parts = self.gather_data(memo=SUMS_MEMO)
        rows = sum(p["rows"] for p in parts)
        sums = [sum(values) for values in zip(*(p["sums"] for p in parts), strict=True)]
        squares = [sum(values) for values in zip(*(p["squares"] for p in parts), strict=True)]
        means = [s / rows for s in sums]
        stds = [
            math.sqrt(max(q - rows * m * m, 0.0) / (rows - 1))
            for q, m in zip(squares, means, strict=True)
        ]
        stats = {"column": parts[0]["columns"], "rows": rows, "mean": means, "std": stds}
        self.broadcast_data(stats, memo=STATS_MEMO)
        return "write"


@app_state("write")
class Write(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        stats = self.await_data(n=1, memo=STATS_MEMO)
        table = pd.DataFrame(stats)
        table.to_csv(os.path.join(OUTPUT_DIR, "stats.csv"), index=False, float_format="%.17g")
        self.log(f"wrote the statistics of {stats['rows']} rows")
        return "terminal"
