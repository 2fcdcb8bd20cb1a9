"""Test app: every site sends a JSON value with differential privacy; the coordinator writes
what it receives. config.yml: ``dp: {value, use_dp, epsilon, delta, noisetype,
sensitivity, clippingVal}``.

The DP settings are put into the engine's ``default_dp`` directly: FeatureCloud 0.1.0's
``configure_dp`` refuses every Laplace configuration (it requires delta > 0 and delta = 0).
"""

import json
import os

import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

DP_KEYS = ("epsilon", "delta", "noisetype", "sensitivity", "clippingVal")


def read_config():
    with open("/mnt/input/config.yml") as handle:
        return yaml.safe_load(handle)["dp"]


@app_state("initial")
class Send(AppState):
    def register(self):
        self.register_transition("collect", Role.COORDINATOR)
        self.register_transition("terminal", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        self._app.default_dp.update({k: config[k] for k in DP_KEYS if k in config})
        self.store("use_dp", config.get("use_dp", True))
        self.send_data_to_coordinator(config["value"], use_dp=self.load("use_dp"))
        return "collect" if self.is_coordinator else "terminal"


@app_state("collect", Role.COORDINATOR)
class Collect(AppState):
    def register(self):
        self.register_transition("terminal", Role.COORDINATOR)

    def run(self):
        received = self.gather_data(use_dp=self.load("use_dp"))
        with open(os.path.join("/mnt/output", "received.json"), "w") as handle:
            json.dump(sorted(received), handle)  # arrival order varies from run to run
        return "terminal"
