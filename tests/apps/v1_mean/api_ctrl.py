"""The controller API of the older template: role by ``master``, a two-field status,
``POST /data`` with the body only."""

import json
import time

from bottle import Bottle, request
from logic import logic

api_server = Bottle()


@api_server.post("/setup")
def ctrl_setup():
    time.sleep(1)
    payload = request.json
    logic.handle_setup(payload["id"], payload["master"], payload["clients"])
    return ""


@api_server.get("/status")
def ctrl_status():
    print("[CTRL] GET /status", flush=True)  # as the published template does, at every poll
    return json.dumps({"available": logic.status_available, "finished": logic.status_finished})


@api_server.route("/data", method="GET")
def ctrl_data_out():
    return logic.handle_outgoing()


@api_server.route("/data", method="POST")
def ctrl_data_in():
    logic.handle_incoming(request.body.read())
    return ""
