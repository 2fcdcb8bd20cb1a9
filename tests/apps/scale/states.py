"""Test app for workflows: multiply every numeric column of data.csv by ``scale.factor``
from config.yml and write the result as the next step's data.csv (with the config.yml it
used, as many apps do). No messages."""

import os
import shutil

import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, app_state


@app_state("initial")
class Scale(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        with open("/mnt/input/config.yml") as handle:
            factor = yaml.safe_load(handle)["scale"]["factor"]
        data = pd.read_csv("/mnt/input/data.csv")
        numeric = data.select_dtypes("number").columns
        data[numeric] = data[numeric] * factor
        data.to_csv(os.path.join("/mnt/output", "data.csv"), index=False)
        shutil.copy("/mnt/input/config.yml", "/mnt/output/config.yml")  # passed on, as apps do
        self.log(f"scaled {len(numeric)} columns by {factor}")
        return "terminal"
