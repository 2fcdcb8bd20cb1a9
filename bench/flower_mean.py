"""Flower's simulation of bench_scale.py's job, for comparison: one round of a column mean.

Each of N simulated clients reads its site's ``data.csv`` (the files bench_scale.py writes) and
sends its column sums and row count; the server divides. Runs on Flower's Ray simulation
engine, one CPU per client, as Flower's documentation sets it up. Prints the mean as JSON so
the caller can check Flower computed the same thing.

Run: PYTHON bench/flower_mean.py DATA_DIR N   (PYTHON with flwr[simulation]; see bench/README.md)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

DATA = Path(sys.argv[1])
SITES = int(sys.argv[2])
client = ClientApp()
server = ServerApp()
result: dict[str, object] = {}


@client.query()
def column_sums(msg: Message, context: Context) -> Message:
    site = context.node_config["partition-id"]
    values = np.loadtxt(DATA / f"s{site}" / "data.csv", delimiter=",", skiprows=1, ndmin=2)
    content = RecordDict(
        {"sums": ArrayRecord([values.sum(axis=0)]), "n": MetricRecord({"rows": len(values)})}
    )
    return Message(content=content, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    # The simulated nodes register a moment after the server starts.
    nodes = list(grid.get_node_ids())
    while len(nodes) < SITES:
        time.sleep(0.05)
        nodes = list(grid.get_node_ids())
    ask = RecordDict({"ask": ConfigRecord({})})
    asks = [Message(content=ask, dst_node_id=node, message_type="query") for node in nodes]
    replies = list(grid.send_and_receive(asks))
    failed = [reply.error for reply in replies if reply.has_error()]
    if failed or len(replies) != SITES:
        raise SystemExit(f"{len(replies)} replies of {SITES}; errors: {failed}")
    sums = sum(reply.content["sums"].to_numpy_ndarrays()[0] for reply in replies)
    rows = sum(reply.content["n"]["rows"] for reply in replies)
    result["mean"] = (sums / rows).tolist()


if __name__ == "__main__":
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=SITES,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    print(json.dumps(result))
