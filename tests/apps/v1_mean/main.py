"""An app on the older FeatureCloud template (its own api_ctrl.py, no engine package)."""

from api_ctrl import api_server
from bottle import Bottle

server = Bottle()

if __name__ == "__main__":
    server.mount("/api", api_server)
    server.run(host="localhost", port=5000)
