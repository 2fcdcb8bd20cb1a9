"""Entry point, as on featurecloud.ai: the engine's API under /api on localhost:5000."""

import states  # registers the states
from bottle import Bottle, request
from FeatureCloud.app.api.http_ctrl import api_server
from FeatureCloud.app.api.http_web import web_server
from FeatureCloud.app.engine.app import app

server = Bottle()


def count_status_polls():
    if request.path.endswith("/status"):
        states.STATUS_POLLS[0] += 1


if __name__ == "__main__":
    app.register()
    api_server.add_hook("before_request", count_status_polls)
    server.mount("/api", api_server)
    server.mount("/web", web_server)
    server.run(host="localhost", port=5000)
