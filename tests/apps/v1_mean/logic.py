"""Mean of the ``value`` column of /mnt/input/data.csv over all sites, older-template style:
participants send (sum, n) to the master, the master sends the mean to everyone."""

import csv
import json
import threading
import time


class AppLogic:
    def __init__(self):
        self.status_available = False
        self.status_finished = False
        self.id = None
        self.master = None
        self.clients = None
        self.incoming = []
        self.outgoing = None
        self.lock = threading.Lock()

    def handle_setup(self, client_id, master, clients):
        self.id, self.master, self.clients = client_id, master, clients
        threading.Thread(target=self.app_flow, daemon=True).start()

    def handle_incoming(self, data):
        with self.lock:
            self.incoming.append(json.loads(data))

    def handle_outgoing(self):
        self.status_available = False
        return self.outgoing

    def send(self, value):
        self.outgoing = json.dumps(value)
        self.status_available = True
        while self.status_available:
            time.sleep(0.05)

    def wait_for(self, count):
        while True:
            with self.lock:
                if len(self.incoming) >= count:
                    taken, self.incoming = self.incoming[:count], self.incoming[count:]
                    return taken
            time.sleep(0.05)

    def app_flow(self):
        with open("/mnt/input/data.csv") as handle:
            values = [float(row["value"]) for row in csv.DictReader(handle)]
        local = {"sum": sum(values), "n": len(values)}
        if self.master:
            parts = [local, *self.wait_for(len(self.clients) - 1)]
            mean = sum(p["sum"] for p in parts) / sum(p["n"] for p in parts)
            self.send({"mean": mean})
        else:
            self.send(local)
            mean = self.wait_for(1)[0]["mean"]
        with open("/mnt/output/mean.json", "w") as handle:
            json.dump({"mean": mean}, handle)
        print(f"mean of all sites: {mean}", flush=True)
        self.status_finished = True


logic = AppLogic()
