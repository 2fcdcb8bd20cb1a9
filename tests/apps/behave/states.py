"""A test app on the FeatureCloud engine whose behaviour each site's config.yml chooses.

It sums one number per site (gather at the coordinator, broadcast back), and on request
fails, hangs, or reports what it can see of its environment, so that tests exercise
fedsim's failure handling and separation with a real app.

config.yml (all keys optional):
    behave:
      value: 1.5          # this site's number
      fail: false         # raise in the first state, after writing partial output
      hang: false         # never leave the first state
      error_state: false  # report state "error" without finished, then retry for ever (as
                          # published apps do); error_at.txt holds when (epoch seconds)
      await_memo: null    # after the first state, wait for data with this memo (never sent)
      report_env: PREFIX  # write the names and values of env vars starting with PREFIX
      linger: false       # a participant never reports finished after writing its result
      links: {}           # name -> target: symbolic links to leave in /mnt/output
      fifo: null          # a name: a FIFO to leave in /mnt/output (a reader would block)
      payload_bytes: 0    # send this many extra bytes along with the number (a big message)
      idle: 0             # seconds to think in the first state (no message, no change);
                          # status_polls.txt then says how often the agent asked meanwhile
      await_cost: false   # await.json: how often the engine looked for the sum (its
                          # sleeps), and the CPU (of the thread that waits) and wall seconds
                          # the wait took
"""

import json
import os
import sys
import time

import yaml
from FeatureCloud.app.engine.app import AppState, Role, State, app_state

STATUS_POLLS = [0]
"""GET /api/status requests seen (main.py counts them)."""
INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"


def read_config():
    path = os.path.join(INPUT_DIR, "config.yml")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return (yaml.safe_load(handle) or {}).get("behave", {})


@app_state("initial")
class First(AppState):
    def register(self):
        self.register_transition("sum", Role.COORDINATOR)
        self.register_transition("write", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        with open(os.path.join(OUTPUT_DIR, "partial.txt"), "w") as handle:
            handle.write(f"{self.id} started\n")
        with open(os.path.join(OUTPUT_DIR, "python.txt"), "w") as handle:
            handle.write("{}.{}\n".format(*sys.version_info[:2]))
        for name, target in (config.get("links") or {}).items():
            os.symlink(target, os.path.join(OUTPUT_DIR, name))
        if config.get("fifo"):
            os.mkfifo(os.path.join(OUTPUT_DIR, config["fifo"]))
        prefix = config.get("report_env")
        if prefix:
            seen = {k: v for k, v in os.environ.items() if k.startswith(prefix)}
            with open(os.path.join(OUTPUT_DIR, "env.json"), "w") as handle:
                json.dump(seen, handle)
        if config.get("fail"):
            raise RuntimeError(f"deliberate failure at {self.id}")
        while config.get("hang"):
            time.sleep(0.5)
        if config.get("idle"):
            before = STATUS_POLLS[0]
            time.sleep(float(config["idle"]))
            with open(os.path.join(OUTPUT_DIR, "status_polls.txt"), "w") as handle:
                handle.write(f"{STATUS_POLLS[0] - before}\n")
        if config.get("error_state"):
            print(f"cannot reach the licence server from {self.id}; retrying", flush=True)
            self.update(message="licence check failed", state=State.ERROR)
            with open(os.path.join(OUTPUT_DIR, "error_at.txt"), "w") as handle:
                handle.write(f"{time.time()}\n")
            while True:
                time.sleep(0.5)
        if config.get("await_memo"):
            self.await_data(n=1, memo=config["await_memo"])
        value = float(config.get("value", 1.0))
        padding = int(config.get("payload_bytes", 0))
        self.send_data_to_coordinator([value, "x" * padding] if padding else value)
        return "sum" if self.is_coordinator else "write"


@app_state("sum", Role.COORDINATOR)
class Sum(AppState):
    def register(self):
        self.register_transition("write", Role.COORDINATOR)

    def run(self):
        values = [d[0] if isinstance(d, list) else d for d in self.gather_data()]
        self.broadcast_data(sum(values))
        return "write"


@app_state("write")
class Write(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        cfg = read_config()
        engine = sys.modules[AppState.__module__]  # the package's, or a vendored copy
        sleep, checks = engine.sleep, [0]

        def counted_sleep(seconds):
            checks[0] += 1
            sleep(seconds)

        if cfg.get("await_cost"):
            engine.sleep = counted_sleep
        cpu, wall = time.thread_time(), time.monotonic()
        try:
            total = self.await_data(n=1)
        finally:
            if cfg.get("await_cost"):
                engine.sleep = sleep
        if cfg.get("await_cost"):
            cost = {"checks": checks[0], "cpu_s": time.thread_time() - cpu}
            cost["wall_s"] = time.monotonic() - wall
            with open(os.path.join(OUTPUT_DIR, "await.json"), "w") as handle:
                json.dump(cost, handle)
        with open(os.path.join(OUTPUT_DIR, "sum.json"), "w") as handle:
            json.dump({"sum": total}, handle)
        while cfg.get("linger") and not self.is_coordinator:
            time.sleep(0.5)
        return "terminal"
