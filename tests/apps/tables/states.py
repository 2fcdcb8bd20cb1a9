"""A test app that writes its result in every form the generic comparison reads.

Each site sends the sum and count of its ``x`` column to the coordinator (gather, no memo:
works alone too) and gets the global mean back (broadcast with a memo: a lone coordinator
does not wait for ever). Every site then writes the files its config.yml lists:

    tables:
      write: [stats.csv, centred.tsv, model.json, notes.txt]   # the default: all four

- ``stats.csv``: ``stat,value`` rows ``mean`` (the same federated and centralised) and
  ``local_rows`` (the rows this site saw: differs by design, so a comparison can fail)
- ``centred.tsv``: ``row,x,centred`` for the site's own rows (``centred = x - mean``)
- ``model.json``: ``{"mean": ..., "rows": ...}``
- ``notes.txt``: text, which no comparison can read
"""

import json
import os

import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
MEAN_MEMO = "global-mean"
ALL_FILES = ["stats.csv", "centred.tsv", "model.json", "notes.txt"]


def files_to_write():
    path = os.path.join(INPUT_DIR, "config.yml")
    if not os.path.isfile(path):
        return ALL_FILES
    with open(path) as handle:
        return ((yaml.safe_load(handle) or {}).get("tables") or {}).get("write", ALL_FILES)


@app_state("initial")
class Local(AppState):
    def register(self):
        self.register_transition("aggregate", Role.COORDINATOR)
        self.register_transition("write", Role.PARTICIPANT)

    def run(self):
        data = pd.read_csv(os.path.join(INPUT_DIR, "data.csv"))
        self.store("x", data["x"].tolist())
        self.send_data_to_coordinator([float(data["x"].sum()), len(data)])
        return "aggregate" if self.is_coordinator else "write"


@app_state("aggregate", Role.COORDINATOR)
class Aggregate(AppState):
    def register(self):
        self.register_transition("write", Role.COORDINATOR)

    def run(self):
        parts = self.gather_data()
        rows = sum(n for _, n in parts)
        self.broadcast_data([sum(s for s, _ in parts) / rows, rows], memo=MEAN_MEMO)
        return "write"


@app_state("write")
class Write(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        mean, rows = self.await_data(n=1, memo=MEAN_MEMO)
        x = self.load("x")
        wanted = files_to_write()
        if "stats.csv" in wanted:
            stats = pd.DataFrame({"stat": ["mean", "local_rows"], "value": [mean, len(x)]})
            stats.to_csv(os.path.join(OUTPUT_DIR, "stats.csv"), index=False)
        if "centred.tsv" in wanted:
            centred = pd.DataFrame({"row": range(len(x)), "x": x})
            centred["centred"] = centred["x"] - mean
            centred.to_csv(os.path.join(OUTPUT_DIR, "centred.tsv"), sep="\t", index=False)
        if "model.json" in wanted:
            with open(os.path.join(OUTPUT_DIR, "model.json"), "w") as handle:
                json.dump({"mean": mean, "rows": rows}, handle)
        if "notes.txt" in wanted:
            with open(os.path.join(OUTPUT_DIR, "notes.txt"), "w") as handle:
                handle.write(f"mean of {rows} rows\n")
        return "terminal"
