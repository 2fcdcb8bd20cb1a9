"""Test app: every site sends a JSON value with secure aggregation; the coordinator writes
the one aggregate it receives. config.yml: ``smpc: {value, exponent, shards, operation,
delay}``; ``delay`` (seconds) makes the site a straggler that sends its shares that late."""

import json
import os
import time

import yaml
from FeatureCloud.app.engine.app import AppState, Role, SMPCOperation, app_state


def read_config():
    with open("/mnt/input/config.yml") as handle:
        return yaml.safe_load(handle)["smpc"]


@app_state("initial")
class Send(AppState):
    def register(self):
        self.register_transition("aggregate", Role.COORDINATOR)
        self.register_transition("terminal", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        self.configure_smpc(
            exponent=config.get("exponent", 8),
            shards=config.get("shards", 0),
            operation=SMPCOperation(config.get("operation", "add")),
        )
        time.sleep(float(config.get("delay", 0)))
        self.send_data_to_coordinator(config["value"], use_smpc=True)
        return "aggregate" if self.is_coordinator else "terminal"


@app_state("aggregate", Role.COORDINATOR)
class Aggregate(AppState):
    def register(self):
        self.register_transition("terminal", Role.COORDINATOR)

    def run(self):
        total = self.aggregate_data(use_smpc=True)
        with open(os.path.join("/mnt/output", "aggregate.json"), "w") as handle:
            json.dump(total, handle)
        return "terminal"
