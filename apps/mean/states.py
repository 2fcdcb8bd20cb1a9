"""Federated column means.

Every site sends the column sums and the row count of its CSV to the coordinator; the
coordinator adds them up, divides, and broadcasts the global means; every site writes them.
Only sums and counts leave a site, never rows.
"""

import os

import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

# An explicit memo for the broadcast: without one, a coordinator that is the only site (the
# centralised run) would take its await of the broadcast for a gather round and wait forever.
MEANS_MEMO = "global-means"
INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
DEFAULTS = {"input_filename": "data.csv", "sep": ",", "output_filename": "means.csv"}


def read_config():
    config = dict(DEFAULTS)
    path = os.path.join(INPUT_DIR, "config.yml")
    if os.path.isfile(path):
        with open(path) as handle:
            config.update((yaml.safe_load(handle) or {}).get("fc_mean", {}))
    return config


@app_state("initial")
class LocalSums(AppState):
    def register(self):
        self.register_transition("aggregate", Role.COORDINATOR)
        self.register_transition("write", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        self.store("config", config)
        data = pd.read_csv(os.path.join(INPUT_DIR, config["input_filename"]), sep=config["sep"])
        numeric = data.select_dtypes("number")
        self.log(f"{len(numeric)} rows, {numeric.shape[1]} numeric columns")
        self.send_data_to_coordinator(
            {
                "site": self.id,
                "columns": list(numeric.columns),
                "sums": numeric.sum(axis=0).tolist(),
                "rows": len(numeric),
            }
        )
        return "aggregate" if self.is_coordinator else "write"


@app_state("aggregate", Role.COORDINATOR)
class Aggregate(AppState):
    def register(self):
        self.register_transition("write", Role.COORDINATOR)

    def run(self):
        # added up in site order, not arrival order: the same inputs give the same bits
        parts = sorted(self.gather_data(), key=lambda part: part["site"])
        columns = parts[0]["columns"]
        for part in parts[1:]:
            if part["columns"] != columns:
                raise ValueError(f"sites disagree on the columns: {columns} vs {part['columns']}")
        rows = sum(part["rows"] for part in parts)
        sums = [sum(part["sums"][i] for part in parts) for i in range(len(columns))]
        self.log(f"aggregated {len(parts)} sites, {rows} rows in all")
        self.broadcast_data(
            {"columns": columns, "means": [s / rows for s in sums], "rows": rows},
            memo=MEANS_MEMO,
        )
        return "write"


@app_state("write")
class WriteMeans(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        config = self.load("config")
        result = self.await_data(n=1, memo=MEANS_MEMO)
        table = pd.DataFrame({"column": result["columns"], "mean": result["means"]})
        table.to_csv(
            os.path.join(OUTPUT_DIR, config["output_filename"]), index=False, float_format="%.17g"
        )
        self.log(f"wrote the means of {result['rows']} rows")
        return "terminal"
